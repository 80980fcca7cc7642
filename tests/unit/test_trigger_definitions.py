"""Trigger definitions: FC's JSON in and out, the functions file, the secret URL."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncinvoke import functions
from asyncinvoke.errors import ConfigError, InvalidTrigger
from asyncinvoke.triggers import definitions, events, leader
from asyncinvoke.triggers.definitions import SourceConfig, TimerConfig

# croniter's work varies with the machine's load: no per-example deadline.
LOADED_MACHINE = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

SECRET_URL = "amqp://app:s3cret@other-host:5672/"


def test_a_timer_reads_fcs_trigger_config_string() -> None:
    body = {
        "triggerName": "nightly",
        "triggerType": "timer",
        "description": "d",
        "triggerConfig": '{"cronExpression": "0 0 2 * * *", "payload": "go", "enable": true}',
    }
    trigger = definitions.create("report", body, now_ms=5_000)
    assert trigger.config == TimerConfig("0 0 2 * * *", "go", True)
    shown = trigger.to_fc()
    assert orjson.loads(shown["triggerConfig"]) == {
        "cronExpression": "0 0 2 * * *",
        "payload": "go",
        "enable": True,
    }
    assert (shown["triggerName"], shown["triggerType"], shown["description"]) == (
        "nightly",
        "timer",
        "d",
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"triggerName": "1bad", "triggerType": "timer"}, "triggerName"),
        ({"triggerName": "t", "triggerType": "oss"}, "triggerType"),
        ({"triggerName": "t", "triggerType": "timer", "triggerConfig": "{"}, "triggerConfig"),
        (
            {
                "triggerName": "t",
                "triggerType": "timer",
                "triggerConfig": {"cronExpression": "* * *"},
            },
            "cronExpression",
        ),
        (
            {
                "triggerName": "t",
                "triggerType": "timer",
                "triggerConfig": {"cronExpression": "@every 1s", "enable": "yes"},
            },
            "enable",
        ),
        (
            {
                "triggerName": "t",
                "triggerType": "rabbitmq",
                "triggerConfig": {"queueName": "q", "batchSize": 1001},
            },
            "batchSize",
        ),
        (
            {
                "triggerName": "t",
                "triggerType": "rabbitmq",
                "triggerConfig": {"queueName": "q", "batchWindow": 16},
            },
            "batchWindow",
        ),
        (
            {
                "triggerName": "t",
                "triggerType": "rabbitmq",
                "triggerConfig": {"queueName": "q", "url": "http://x/"},
            },
            "url",
        ),
        ({"triggerName": "t", "triggerType": "rabbitmq", "triggerConfig": {}}, "queueName"),
    ],
)
def test_every_bad_definition_names_its_field(body: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidTrigger) as caught:
        definitions.create("report", body, now_ms=0)
    assert caught.value.field == field


def test_a_source_reads_fcs_event_bridge_shape_and_writes_it_back_redacted() -> None:
    config = {
        "triggerEnable": True,
        "eventSourceConfig": {
            "eventSourceType": "RabbitMQ",
            "eventSourceParameters": {
                "sourceRabbitMQParameters": {
                    "QueueName": "orders",
                    "VirtualHostName": "shop",
                    "Url": SECRET_URL,
                }
            },
        },
        "runOptions": {"batchWindow": {"CountBasedWindow": 100, "TimeBasedWindow": 2}},
    }
    trigger = definitions.create(
        "ingest",
        {
            "triggerName": "orders",
            "triggerType": "rabbitmq",
            "triggerConfig": orjson.dumps(config).decode(),
        },
        now_ms=0,
    )
    assert trigger.config == SourceConfig("orders", SECRET_URL, "shop", 100, 2.0, True)
    shown = trigger.to_fc()
    assert "s3cret" not in orjson.dumps(shown).decode()
    params = orjson.loads(shown["triggerConfig"])["eventSourceConfig"]["eventSourceParameters"]
    assert params["sourceRabbitMQParameters"]["Url"] == "amqp://app:***@other-host:5672/"
    # The stored record keeps the secret, and reads back the same.
    assert definitions.from_record(trigger.to_record()) == trigger


def test_an_update_sending_the_redacted_url_back_keeps_the_secret() -> None:
    trigger = definitions.create(
        "ingest",
        {
            "triggerName": "o",
            "triggerType": "rabbitmq",
            "triggerConfig": {"queueName": "q", "url": SECRET_URL},
        },
        now_ms=0,
    )
    shown = orjson.loads(trigger.to_fc()["triggerConfig"])
    shown["runOptions"]["batchWindow"]["CountBasedWindow"] = 7
    updated = definitions.update(trigger, {"triggerConfig": orjson.dumps(shown).decode()}, 9)
    assert isinstance(updated.config, SourceConfig)
    assert (updated.config.url, updated.config.batch_size, updated.modified_ms) == (
        SECRET_URL,
        7,
        9,
    )


def test_the_source_url_takes_the_vhost() -> None:
    config = SourceConfig("q", vhost="shop/eu")
    assert config.source_url("amqp://g:g@h:5672/") == "amqp://g:g@h:5672/shop%2Feu"
    assert SourceConfig("q").source_url("amqp://a/,amqp://b/") == "amqp://a/"


def test_the_functions_file_declares_triggers_of_both_kinds(tmp_path: object) -> None:
    loaded = functions.parse(
        """
        [functions.report]
        handler = "m:f"
        [[functions.report.triggers]]
        name = "nightly"
        type = "timer"
        cron = "CRON_TZ=Europe/Berlin 0 0 2 * * *"
        payload = "full"
        [[functions.report.triggers]]
        name = "orders"
        type = "rabbitmq"
        queue = "orders"
        batch_size = 50
        batch_window = 1.5
        """.replace("\n        ", "\n"),
        "f.toml",
    )
    timer, source = loaded.functions["report"].triggers
    assert timer.config == TimerConfig("CRON_TZ=Europe/Berlin 0 0 2 * * *", "full", True)
    assert source.config == SourceConfig("orders", None, None, 50, 1.5, True)


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ('name = "t"\ntype = "timer"\ncron = "bad"', "triggers.t.cron"),
        ('name = "t"\ntype = "rabbitmq"\nqueue = "q"\nbatch_size = 0', "triggers.t.batch_size"),
        ('name = "t"\ntype = "timer"\ncron = "@every 1s"\nsize = 1', "triggers.t.size"),
        ('type = "timer"', "triggers.name"),
    ],
)
def test_a_bad_trigger_in_the_file_names_file_function_and_key(table: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        functions.parse(
            f'[functions.report]\nhandler = "m:f"\n[[functions.report.triggers]]\n{table}\n',
            "f.toml",
        )
    assert caught.value.key == key
    assert "f.toml" in str(caught.value) and "report" in str(caught.value)


def test_a_json_body_is_the_events_data_and_anything_else_travels_base64() -> None:
    stamp = datetime(2026, 11, 30, 1, 2, 3, tzinfo=UTC)
    parsed = events.cloud_event(
        events.SourceMessage(
            b'{"order": 7}',
            {"message_id": "m1", "timestamp": stamp, "headers": {"k": "v"}, "priority": 3},
            "ex",
            "rk",
            True,
        ),
        "/rabbitmq/shop/q",
    )
    assert parsed["data"] == {"order": 7}
    assert (parsed["specversion"], parsed["id"], parsed["source"]) == (
        "1.0",
        "m1",
        "/rabbitmq/shop/q",
    )
    assert parsed["time"] == "2026-11-30T01:02:03Z"
    assert orjson.loads(parsed["amqpheaders"]) == {"k": "v"}
    assert (
        parsed["amqppriority"],
        parsed["amqpexchange"],
        parsed["amqproutingkey"],
        parsed["amqpredelivered"],
    ) == (3, "ex", "rk", True)
    binary = events.cloud_event(events.SourceMessage(b"\xff\x00not json"), "/q")
    assert "data" not in binary
    assert base64.b64decode(binary["data_base64"]) == b"\xff\x00not json"


@LOADED_MACHINE
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=60), st.integers(1_000, 5_000))
def test_batches_keep_every_event_in_order_and_under_the_size_limit(
    bodies: list[bytes], limit: int
) -> None:
    encoded = events.encoded_events((events.SourceMessage(b) for b in bodies), "/q")
    lists = events.batches(encoded, limit)
    decoded = [event for part in lists for event in orjson.loads(part)]
    assert decoded == [orjson.loads(event) for event in encoded]
    # A list is over the limit only when it holds a single event too big on its own.
    assert all(
        len(part) <= limit - events.ENVELOPE_OVERHEAD or len(orjson.loads(part)) == 1
        for part in lists
    )


@LOADED_MACHINE
@given(
    st.dictionaries(st.text(max_size=5), st.integers(0, 10**13)),
    st.dictionaries(st.text(max_size=5), st.integers(0, 10**13)),
)
def test_folding_batons_keeps_the_later_progress_of_each_trigger(
    first: dict[str, int], second: dict[str, int]
) -> None:
    merged = leader.merge(first, second)
    assert merged == leader.merge(second, first)
    assert set(merged) == set(first) | set(second)
    for key, value in merged.items():
        assert value == max(first.get(key, -1), second.get(key, -1))
    assert leader.decode_baton(leader.encode_baton(merged)) == merged
    assert leader.decode_baton(b"\xc1garbage") == {}
