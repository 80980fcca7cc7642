"""The dead-letter tool against the real broker: reading changes nothing, replay and purge
take exactly what was selected, and every error is one line with a non-zero exit.

Failure records are published straight to ``{ns}.failed`` in the shape the worker gives
them (``contract.record``, message id and x-function / x-condition headers); one test
makes them with a real worker.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aio_pika
import orjson
import pytest
from click.testing import CliRunner
from pamqp import commands as spec

from asyncinvoke import Client, contract, dlq, topology
from asyncinvoke.broker import Broker
from asyncinvoke.cli import cli
from asyncinvoke.contract import Envelope
from tests.conftest import ROOT, Namespace, collect, running_worker, wait_for
from tests.support import handlers

Connection = aio_pika.abc.AbstractConnection
RETRIES = contract.RETRIES_EXHAUSTED
REFUSED = contract.NON_RETRYABLE


def _error() -> contract.ErrorInfo:
    try:
        raise ValueError("disk full\nwhile writing /var/spool/out")
    except ValueError as exc:
        return contract.ErrorInfo.of(exc)


ERROR = _error()


def failure_record(
    index: int,
    function: str,
    condition: str = RETRIES,
    *,
    payload: Any = None,
    invocation: Any = None,
    now_ms: int | None = None,
) -> dict[str, Any]:
    """A record as the worker makes it when an invocation gives up."""
    now = now_ms if now_ms is not None else dlq.now_ms()
    envelope = Envelope(
        id=f"r{index:06d}",
        fn=function,
        payload={"n": index} if payload is None else payload,
        created_at=now - 60_000,
        attempt=3,
    )
    return contract.Record(
        request_id=envelope.id,
        function=function,
        condition=condition,
        attempts=4,
        request_payload=envelope.payload,
        status_code=500,
        function_error=contract.UNHANDLED,
        response=ERROR,
        invocation=envelope.for_replay() if invocation is None else invocation,
        timestamp=now - 10_000 + index,
    ).to_wire()


async def publish_records(
    connection: Connection, names: topology.Names, records: Iterable[dict[str, Any]]
) -> list[str]:
    """Publish records to the failure exchange, confirmed, 1,000 in flight; their ids."""
    channel = await connection.channel(publisher_confirms=True)
    underlay = await channel.get_underlay_channel()
    window = asyncio.Semaphore(1000)

    async def one(record: dict[str, Any]) -> str:
        context = record["requestContext"]
        async with window:
            await underlay.basic_publish(
                contract.pack(record),
                exchange=names.failed,
                routing_key=context["functionName"],
                properties=spec.Basic.Properties(
                    message_id=context["requestId"],
                    delivery_mode=2,
                    content_type=contract.CONTENT_TYPE,
                    headers={
                        "x-function": context["functionName"],
                        "x-condition": context["condition"],
                    },
                ),
                timeout=30,
            )
        return str(context["requestId"])

    try:
        return list(await asyncio.gather(*(one(record) for record in records)))
    finally:
        await channel.close()


async def declare(namespace: Namespace, connection: Connection, functions_toml: str) -> None:
    """The namespace's topology, as 'asyncinvoke topology declare' makes it."""
    functions_file = namespace.functions(functions_toml)
    async with connection.channel() as channel:
        await topology.declare(channel, namespace.names, functions_file.functions.values())


NOOP_FUNCTIONS = """
    [functions.alpha]
    handler = "tests.support.handlers:noop"
"""


def _cli(
    namespace: Namespace, args: tuple[str, ...], stdin: str | None, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asyncinvoke", "dlq", *args],
        env=namespace.env(**env),
        cwd=ROOT,
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=60,
    )


async def dlq_cli(
    namespace: Namespace, *args: str, stdin: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(_cli, namespace, args, stdin, env)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]


async def remaining_ids(namespace: Namespace) -> list[str]:
    """The ids in the failure queue, in queue order (read with the tool itself)."""
    ids: list[str] = []
    with contextlib.suppress(dlq.EmptyQueue):
        await dlq.list_records(namespace.settings, dlq.ALL, lambda s: ids.append(str(s.id)))
    return ids


async def envelopes_in(connection: Connection, queue: str, count: int) -> list[Envelope]:
    messages = await collect(connection, queue, count, 30)
    now = dlq.now_ms()
    return [
        contract.decode(m.body, received_at_ms=now, max_payload_bytes=1 << 20, max_delay_s=3600)
        for m in messages
    ]


# -- reading -----------------------------------------------------------------------------


async def test_listing_a_thousand_records_twice_gives_the_same_ids_and_changes_nothing(
    namespace: Namespace, amqp: Connection
) -> None:
    await declare(namespace, amqp, NOOP_FUNCTIONS)
    conditions = (RETRIES, REFUSED)
    published = await publish_records(
        amqp, namespace.names, (failure_record(i, "alpha", conditions[i % 2]) for i in range(1000))
    )

    first = await dlq_cli(namespace, "list", "--json")
    second = await dlq_cli(namespace, "list", "--json")

    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    first_ids = [orjson.loads(line)["id"] for line in first.stdout.splitlines()]
    second_ids = [orjson.loads(line)["id"] for line in second.stdout.splitlines()]
    assert first_ids == second_ids == published  # all of them, in the queue's order
    assert await topology.queue_depth(amqp, namespace.names.failed) == 1000
    line = orjson.loads(first.stdout.splitlines()[1])
    assert line["function"] == "alpha" and line["condition"] == REFUSED
    assert line["attempts"] == 4 and line["error"] == "ValueError: disk full"
    assert 9 < line["age_s"] < 60


async def test_the_table_for_people_shows_the_first_line_of_each_error_and_a_limit(
    namespace: Namespace, amqp: Connection
) -> None:
    await declare(namespace, amqp, NOOP_FUNCTIONS)
    await publish_records(amqp, namespace.names, (failure_record(i, "alpha") for i in range(60)))

    result = await dlq_cli(namespace, "list", "--limit", "5", COLUMNS="200")

    assert result.returncode == 0, result.stderr
    assert "r000004" in result.stdout and "r000005" not in result.stdout
    assert "ValueError: disk full" in result.stdout and "while writing" not in result.stdout
    assert "5 shown, 60 record(s) in the queue" in result.stdout


async def test_stats_count_by_function_and_condition_with_oldest_and_newest(
    namespace: Namespace, amqp: Connection
) -> None:
    await declare(namespace, amqp, NOOP_FUNCTIONS)
    now = dlq.now_ms()
    records = [failure_record(i, "alpha", RETRIES, now_ms=now) for i in range(5)]
    records += [failure_record(i, "beta", REFUSED, now_ms=now) for i in range(5, 8)]
    await publish_records(amqp, namespace.names, records)

    result = await dlq_cli(namespace, "stats", "--json")

    assert result.returncode == 0, result.stderr
    stats = orjson.loads(result.stdout)
    assert stats["total"] == 8 and stats["queue"] == namespace.names.failed
    groups = {(g["function"], g["condition"]): g for g in stats["groups"]}
    assert groups[("alpha", RETRIES)]["count"] == 5 and groups[("beta", REFUSED)]["count"] == 3
    assert stats["oldest"] == records[0]["timestamp"]
    assert stats["newest"] == records[-1]["timestamp"]
    assert await topology.queue_depth(amqp, namespace.names.failed) == 8


async def test_show_prints_the_whole_record_of_a_real_failure(
    namespace: Namespace, amqp: Connection
) -> None:
    functions_file = namespace.functions("""
        [functions.breaks]
        handler = "tests.support.handlers:always_fail"
        max_retries = 0
    """)
    async with running_worker(namespace, functions_file):
        async with Client(settings=namespace.settings) as client:
            invocation_id = await client.invoke("breaks", {"order": 42})
        async with asyncio.timeout(20):
            while not await topology.queue_depth(amqp, namespace.names.failed):
                await asyncio.sleep(0.05)

    people = await dlq_cli(namespace, "show", invocation_id)
    scripts = await dlq_cli(namespace, "show", invocation_id, "--json")

    assert people.returncode == 0, people.stderr
    for part in (invocation_id, "breaks", RETRIES, '"order": 42', "stack trace", "Traceback"):
        assert part in people.stdout, part
    assert "always fails" in people.stdout
    record = orjson.loads(scripts.stdout)
    assert record["requestContext"]["requestId"] == invocation_id
    assert record["invocation"]["payload"] == {"order": 42}
    assert any("always_fail" in line for line in record["responsePayload"]["stackTrace"])
    assert await topology.queue_depth(amqp, namespace.names.failed) == 1


async def test_since_selects_the_records_made_after_a_moment(
    namespace: Namespace, amqp: Connection
) -> None:
    await declare(namespace, amqp, NOOP_FUNCTIONS)
    now = dlq.now_ms()
    old = [failure_record(i, "alpha", now_ms=now - 7_200_000) for i in range(3)]
    new = [failure_record(i, "alpha", now_ms=now) for i in range(3, 6)]
    await publish_records(amqp, namespace.names, [old[0], new[0], old[1], new[1], old[2], new[2]])
    listed: list[dlq.Summary] = []

    await dlq.list_records(
        namespace.settings, dlq.Selector(since_ms=dlq.parse_since("1h", now)), listed.append
    )

    assert [s.id for s in listed] == ["r000003", "r000004", "r000005"]


async def test_a_second_reader_is_told_to_wait_rather_than_shown_half_the_records(
    namespace: Namespace, amqp: Connection
) -> None:
    await declare(namespace, amqp, NOOP_FUNCTIONS)
    await publish_records(amqp, namespace.names, (failure_record(i, "alpha") for i in range(10)))

    async with (
        Broker(namespace.settings) as broker,
        dlq.Browser(broker, namespace.names.failed) as browser,
    ):
        held = [delivery async for delivery in browser.deliveries()]
        result = await dlq_cli(namespace, "list")

    assert len(held) == 10
    assert_one_line_error(result, "another 'asyncinvoke dlq' command is reading")
    assert await topology.queue_depth(amqp, namespace.names.failed) == 10


# -- replay ------------------------------------------------------------------------------


async def test_replaying_a_selection_runs_exactly_those_and_removes_exactly_those(
    namespace: Namespace, amqp: Connection
) -> None:
    functions_file = namespace.functions("""
        [functions.alpha]
        handler = "tests.support.handlers:echo"
        [functions.beta]
        handler = "tests.support.handlers:echo"
    """)
    handlers.CALLS["alpha"].clear()
    handlers.CALLS["beta"].clear()
    kinds = [("alpha", RETRIES), ("alpha", REFUSED), ("beta", RETRIES)]
    records = [failure_record(i, *kinds[i % 3]) for i in range(90)]
    selected = [r["requestContext"]["requestId"] for r in records[::3]]
    kept = [r["requestContext"]["requestId"] for i, r in enumerate(records) if i % 3]

    async with running_worker(namespace, functions_file):
        await publish_records(amqp, namespace.names, records)
        result = await dlq_cli(namespace, "replay", "--function", "alpha", "--condition", RETRIES)
        assert result.returncode == 0, result.stderr
        await wait_for(lambda: len(handlers.CALLS["alpha"]) >= 30, 20, "30 replays to run")
        await asyncio.sleep(0.5)  # room for a wrong extra run to show up

    runs = handlers.CALLS["alpha"]
    assert sorted(inv for inv, _, _ in runs) == sorted(selected)
    assert {attempt for _, attempt, _ in runs} == {0}
    assert handlers.CALLS["beta"] == []
    assert "replayed 30 of 30 selected record(s)" in result.stdout
    assert await remaining_ids(namespace) == kept  # the rest stay, in their order


async def test_a_replay_is_a_new_acceptance_and_new_id_gives_new_ids(
    namespace: Namespace, amqp: Connection
) -> None:
    await declare(namespace, amqp, NOOP_FUNCTIONS)
    records = [failure_record(i, "alpha", payload={"n": i, "blob": b"\x00\xff"}) for i in range(6)]
    await publish_records(amqp, namespace.names, records)
    before = dlq.now_ms()

    result = await dlq_cli(
        namespace, "replay", "--id", "r000001", "--id", "r000004", "--new-id", "--json"
    )

    assert result.returncode == 0, result.stderr
    report = orjson.loads(result.stdout)
    assert report["replayed"] == 2 and set(report["new_ids"]) == {"r000001", "r000004"}
    envelopes = await envelopes_in(amqp, namespace.names.function_queue("alpha"), 2)
    assert {e.id for e in envelopes} == set(report["new_ids"].values())
    for envelope in envelopes:
        assert envelope.attempt == 0 and envelope.delay == 0 and envelope.due_at is None
        assert envelope.created_at >= before
        assert envelope.payload["blob"] == b"\x00\xff"
    assert await remaining_ids(namespace) == ["r000000", "r000002", "r000003", "r000005"]


async def test_a_dry_run_changes_nothing(namespace: Namespace, amqp: Connection) -> None:
    await declare(namespace, amqp, NOOP_FUNCTIONS)
    records = [failure_record(i, "alpha") for i in range(7)]
    ids = await publish_records(amqp, namespace.names, records)

    result = await dlq_cli(namespace, "replay", "--all", "--dry-run")

    assert result.returncode == 0, result.stderr
    assert "would replay 7 of 7" in result.stdout
    assert await topology.queue_depth(amqp, namespace.names.function_queue("alpha")) == 0
    assert await remaining_ids(namespace) == ids


async def test_records_that_cannot_be_replayed_stay_and_are_reported(
    namespace: Namespace, amqp: Connection
) -> None:
    await declare(namespace, amqp, NOOP_FUNCTIONS)
    undecodable = failure_record(1, "alpha", contract.INVALID_MESSAGE, invocation=b"\x93garbage")
    nowhere = failure_record(2, "ghost", contract.UNKNOWN_FUNCTION)
    await publish_records(amqp, namespace.names, [failure_record(0, "alpha"), undecodable, nowhere])

    result = await dlq_cli(namespace, "replay", "--all")

    assert_one_line_error(result, "2 selected record(s) cannot be replayed")
    assert "could not be decoded" in result.stdout and "'ghost' has no queue" in result.stdout
    assert "replayed 1 of 3" in result.stdout
    assert await topology.queue_depth(amqp, namespace.names.function_queue("alpha")) == 1
    assert await remaining_ids(namespace) == ["r000001", "r000002"]


async def test_an_export_replays_losslessly_from_the_file(
    namespace: Namespace, amqp: Connection, tmp_path: Path
) -> None:
    await declare(namespace, amqp, NOOP_FUNCTIONS)
    records = [failure_record(i, "alpha", payload={"raw": bytes([i, 0, 255])}) for i in range(20)]
    records.append(failure_record(20, "beta", REFUSED))
    ids = await publish_records(amqp, namespace.names, records)
    export_file = tmp_path / "failed.jsonl"

    exported = await dlq_cli(namespace, "export", str(export_file), "--function", "alpha")

    assert exported.returncode == 0, exported.stderr
    lines = [orjson.loads(line) for line in export_file.read_bytes().splitlines()]
    assert [line["record"]["requestContext"]["requestId"] for line in lines] == ids[:20]
    assert contract.unpack(base64.b64decode(lines[3]["msgpack"])) == records[3]
    assert await remaining_ids(namespace) == ids  # exporting removes nothing

    purged = await dlq_cli(namespace, "purge", "--all", "--yes")
    replayed = await dlq_cli(
        namespace, "replay", "--from-file", str(export_file), "--function", "alpha"
    )

    assert purged.returncode == 0 and replayed.returncode == 0, purged.stderr + replayed.stderr
    envelopes = await envelopes_in(amqp, namespace.names.function_queue("alpha"), 20)
    assert sorted((e.id, e.payload["raw"]) for e in envelopes) == [
        (f"r{i:06d}", bytes([i, 0, 255])) for i in range(20)
    ]


# -- duplicate copies of a failure -------------------------------------------------------


def copy_of(record: dict[str, Any], later_ms: int = 1500) -> dict[str, Any]:
    """The record of the same failure made again a moment later, as a worker whose
    delivery came back after a lost connection makes it (docs/dlq.md)."""
    again = orjson.loads(orjson.dumps(record))
    again["timestamp"] = record["timestamp"] + later_ms
    again["responsePayload"]["errorMessage"] = "disk full (again)"
    return again


async def test_a_failure_recorded_twice_is_counted_listed_and_replayed_once(
    namespace: Namespace, amqp: Connection
) -> None:
    await declare(namespace, amqp, NOOP_FUNCTIONS)
    records = [failure_record(i, "alpha") for i in range(1100)]
    same_id_other_failure = failure_record(7, "alpha")
    same_id_other_failure["requestContext"]["approximateInvokeCount"] = 1
    # One copy beside its original, one past the replay's first slice of 1,000 records:
    # each must be recognised within one command.
    queued = [*records[:6], copy_of(records[5]), *records[6:], same_id_other_failure]
    queued.append(copy_of(records[0]))
    await publish_records(amqp, namespace.names, queued)
    failures = 1101  # 1,100 invocations; r000007 failed twice, after 1 and after 4 attempts

    stats = await dlq_cli(namespace, "stats", "--json")
    people_stats = await dlq_cli(namespace, "stats")
    listed = await dlq_cli(namespace, "list", "--json")
    people_list = await dlq_cli(namespace, "list", COLUMNS="200")

    assert stats.returncode == 0 and listed.returncode == 0, stats.stderr + listed.stderr
    counted = orjson.loads(stats.stdout)
    assert (counted["total"], counted["duplicates"], counted["records"]) == (failures, 2, 1103)
    assert counted["groups"][0]["count"] == failures
    assert "1101 failure(s)" in people_stats.stdout, people_stats.stdout
    assert "1103 records: 2 of them a duplicate" in people_stats.stdout, people_stats.stdout
    ids = [orjson.loads(line)["id"] for line in listed.stdout.splitlines()]
    assert len(ids) == failures
    assert sorted(ids) == sorted([*(r["requestContext"]["requestId"] for r in records), "r000007"])
    assert "1 duplicate copy of a failure shown left out" in people_list.stdout, people_list.stdout
    assert await topology.queue_depth(amqp, namespace.names.failed) == 1103  # reading took none

    replayed = await dlq_cli(namespace, "replay", "--all", "--json")

    assert replayed.returncode == 0, replayed.stderr
    report = orjson.loads(replayed.stdout)
    assert (report["selected"], report["replayed"], report["duplicates"]) == (failures, failures, 2)
    assert report["scanned"] == 1103
    envelopes = await envelopes_in(amqp, namespace.names.function_queue("alpha"), failures)
    sent = Counter(e.id for e in envelopes)
    assert sent["r000000"] == sent["r000005"] == 1 and sent["r000007"] == 2
    assert sum(sent.values()) == failures
    assert await topology.queue_depth(amqp, namespace.names.function_queue("alpha")) == 0
    assert await topology.queue_depth(amqp, namespace.names.failed) == 0  # copies went too


async def test_an_export_keeps_every_copy_marked_and_a_replay_from_it_sends_each_once(
    namespace: Namespace, amqp: Connection, tmp_path: Path
) -> None:
    await declare(namespace, amqp, NOOP_FUNCTIONS)
    records = [failure_record(i, "alpha") for i in range(5)]
    copies = [copy_of(records[1]), copy_of(records[3])]
    await publish_records(amqp, namespace.names, [*records, *copies])
    export_file = tmp_path / "failed.jsonl"

    exported = await dlq_cli(namespace, "export", str(export_file))
    shown = await dlq_cli(namespace, "show", "r000001", COLUMNS="200")

    assert exported.returncode == 0, exported.stderr
    assert "exported 7 record(s) (2 of them a duplicate copy" in exported.stdout
    lines = [orjson.loads(line) for line in export_file.read_bytes().splitlines()]
    assert [line.get("duplicate", False) for line in lines] == [False] * 5 + [True, True]
    assert "record 2 of 2 with id r000001: a duplicate copy of record 1" in shown.stdout
    assert "disk full (again)" in shown.stdout

    purged = await dlq_cli(namespace, "purge", "--all", "--yes")
    replayed = await dlq_cli(namespace, "replay", "--from-file", str(export_file), "--json")

    assert purged.returncode == 0 and "purged 7 record(s)" in purged.stdout, purged.stderr
    assert replayed.returncode == 0, replayed.stderr
    report = orjson.loads(replayed.stdout)
    assert (report["replayed"], report["duplicates"]) == (5, 2)
    envelopes = await envelopes_in(amqp, namespace.names.function_queue("alpha"), 5)
    assert sorted(e.id for e in envelopes) == [f"r{i:06d}" for i in range(5)]
    assert await topology.queue_depth(amqp, namespace.names.function_queue("alpha")) == 0


# -- purge -------------------------------------------------------------------------------


async def test_purge_asks_first_and_removes_exactly_the_selection(
    namespace: Namespace, amqp: Connection
) -> None:
    await declare(namespace, amqp, NOOP_FUNCTIONS)
    conditions = (RETRIES, REFUSED)
    ids = await publish_records(
        amqp, namespace.names, (failure_record(i, "alpha", conditions[i % 2]) for i in range(10))
    )

    declined = await dlq_cli(namespace, "purge", "--condition", REFUSED, stdin="n\n")
    assert declined.returncode != 0 and "Remove 5 record(s)" in declined.stderr
    assert await remaining_ids(namespace) == ids

    accepted = await dlq_cli(namespace, "purge", "--condition", REFUSED, stdin="y\n")
    assert accepted.returncode == 0, accepted.stderr
    assert "purged 5 record(s)" in accepted.stdout
    assert await remaining_ids(namespace) == ids[::2]

    by_id = await dlq_cli(namespace, "purge", "--id", ids[2], "--yes")
    assert by_id.returncode == 0, by_id.stderr
    assert await remaining_ids(namespace) == [ids[0], *ids[4::2]]


# -- errors and help ---------------------------------------------------------------------


async def test_errors_are_one_line_with_a_non_zero_exit(
    namespace: Namespace, amqp: Connection
) -> None:
    missing = await dlq_cli(namespace, "list")
    assert_one_line_error(missing, f"queue '{namespace.names.failed}' does not exist")

    await declare(namespace, amqp, NOOP_FUNCTIONS)
    for args in (("list",), ("export", "-"), ("replay", "--all"), ("purge", "--all", "--yes")):
        assert_one_line_error(await dlq_cli(namespace, *args), "is empty")
    empty_stats = await dlq_cli(namespace, "stats")
    assert empty_stats.returncode == 0 and "is empty" in empty_stats.stdout

    await publish_records(amqp, namespace.names, [failure_record(0, "alpha")])
    assert_one_line_error(await dlq_cli(namespace, "show", "nope"), "no record with id 'nope'")
    assert_one_line_error(
        await dlq_cli(namespace, "replay", "--function", "beta"), "no record", "--function beta"
    )
    down = "amqp://guest:guest@127.0.0.1:1/"
    for args in (("stats",), ("replay", "--all")):
        result = await dlq_cli(namespace, *args, ASYNCINVOKE_AMQP_URL=down)
        assert_one_line_error(result, "cannot connect to RabbitMQ", "guest:***@")
    assert await remaining_ids(namespace) == ["r000000"]


async def test_a_replay_file_is_checked_whole_before_anything_is_sent(
    namespace: Namespace, amqp: Connection, tmp_path: Path
) -> None:
    await declare(namespace, amqp, NOOP_FUNCTIONS)  # the good lines' function can be reached
    # More good lines than the replay's window of confirms in flight: a replay that read
    # the file as it went would have published (and seen confirmed) some before line 301.
    good = [orjson.dumps(failure_record(index, "alpha")).decode() for index in range(300)]
    path = tmp_path / "edited.jsonl"
    path.write_text("\n".join(good) + "\n{not json\n")

    with pytest.raises(dlq.BadReplayFile, match=r"edited.jsonl:301: not JSON"):
        await dlq.replay_file(namespace.settings, str(path))
    names = namespace.names
    for queue in (names.function_queue("alpha"), names.unrouted):
        assert await topology.queue_depth(amqp, queue) == 0, f"{queue}: good lines were sent"


def test_every_dlq_command_says_what_it_does() -> None:
    runner = CliRunner()
    expected = {
        "stats": "Count the failure records by function and condition",
        "list": "List failure records",
        "show": "Show the whole record of invocation ID",
        "replay": "Send failed invocations again, then remove their records",
        "purge": "Remove failure records for good",
        "export": "Write failure records to FILE as JSON lines",
    }
    group = runner.invoke(cli, ["dlq", "--help"])
    assert group.exit_code == 0 and "Inspect, replay, purge and export" in group.output
    for command, summary in expected.items():
        result = runner.invoke(cli, ["dlq", command, "--help"])
        assert result.exit_code == 0, result.output
        assert summary in " ".join(result.output.split()), command


def test_replay_and_purge_refuse_to_guess_what_to_take() -> None:
    runner = CliRunner()
    for command in ("replay", "purge"):
        result = runner.invoke(cli, ["dlq", command])
        assert result.exit_code == 2 and "choose the records to" in result.output
    both = runner.invoke(cli, ["dlq", "purge", "--all", "--function", "alpha"])
    assert both.exit_code == 2 and "give it alone" in both.output


# -- pure parts --------------------------------------------------------------------------


def test_since_takes_a_duration_or_an_iso_time() -> None:
    now = 1_700_000_000_000
    assert dlq.parse_since("90s", now) == now - 90_000
    assert dlq.parse_since("2h", now) == now - 7_200_000
    assert dlq.parse_since("2023-11-14T22:13:20+00:00", now) == now
    with pytest.raises(ValueError, match="neither a duration"):
        dlq.parse_since("yesterday", now)


def test_a_replay_envelope_drops_attempts_delay_and_due_time() -> None:
    invocation = {"v": 1, "id": "a", "fn": "f", "payload": 1, "created_at": 5, "delay": 30}
    envelope = dlq.replay_envelope({"invocation": invocation}, now_ms=1000)
    assert (envelope.id, envelope.created_at, envelope.delay, envelope.attempt) == ("a", 1000, 0, 0)
    assert envelope.replay, "under its own id it is marked a replay (a failed task reruns)"
    fresh = dlq.replay_envelope({"invocation": invocation}, now_ms=1, fresh_id="b")
    assert (fresh.id, fresh.replay) == ("b", False)
    with pytest.raises(dlq.NotReplayable, match="could not be decoded"):
        dlq.replay_envelope({"invocation": b"\x00"}, now_ms=1)
    with pytest.raises(dlq.NotReplayable, match="breaks the contract"):
        dlq.replay_envelope({"invocation": {"v": 1, "fn": "f"}}, now_ms=1)


def test_time_is_shown_in_whole_units() -> None:
    from asyncinvoke.cli.dlq import _age

    now = time.time_ns() // 1_000_000
    assert _age(now - 42_000, now) == "42s"
    assert _age(now - 3_720_000, now) == "1h 2m"
    assert _age(None, now) == "?"
