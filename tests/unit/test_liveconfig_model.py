"""Live configuration, pure: FC's bodies validated field by field, ARNs mapped onto our
destinations, and the API's fields over the functions file's, each with its source."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asyncinvoke.errors import InvalidConfig
from asyncinvoke.functions import Destination, FunctionSpec
from asyncinvoke.liveconfig import model
from asyncinvoke.liveconfig.model import Stored

BASE = FunctionSpec("f", handler="m:f", max_retries=3, concurrency=8)
FILE_SOURCES = {"max_retries": "functions.toml", "concurrency": "default"}


def stored(document: dict[str, Any], version: int = 1) -> Stored:
    return Stored(document, version, 1000, 2000 + version)


@pytest.mark.parametrize(
    ("raw", "ours"),
    [
        ("queue:done", "queue:done"),
        ("function:alert", "function:alert"),
        ("https://h/x", "https://h/x"),
        ("acs:fc:cn-hangzhou:123456:functions/alert", "function:alert"),
        ("acs:mns:cn-hangzhou:123456:/queues/failures/messages", "queue:failures"),
    ],
)
def test_destinations_in_our_form_or_as_fc_and_mns_arns(raw: str, ours: str) -> None:
    assert model.destination(raw, "d") == ours


@pytest.mark.parametrize(
    "raw",
    ["sqs:q", "acs:fc:cn:1:services/s/functions/f", "acs:mns:cn:1:/topics/t/messages", "", 3],
)
def test_other_destinations_are_refused_naming_every_accepted_form(raw: object) -> None:
    with pytest.raises(InvalidConfig) as refused:
        model.destination(raw, "destinationConfig.onSuccess.destination")
    assert refused.value.field == "destinationConfig.onSuccess.destination"
    if isinstance(raw, str):
        assert "acs:mns:<region>:<account>:/queues/NAME/messages" in str(refused.value)


@pytest.mark.parametrize(
    ("body", "field", "text"),
    [
        ({"maxAsyncRetryAttempts": 9}, "maxAsyncRetryAttempts", "from 0 to 8, got 9"),
        ({"maxAsyncRetryAttempts": True}, "maxAsyncRetryAttempts", "from 0 to 8"),
        ({"maxAsyncRetryAttempts": "1"}, "maxAsyncRetryAttempts", "from 0 to 8"),
        ({"maxAsyncEventAgeInSeconds": 0}, "maxAsyncEventAgeInSeconds", "from 1 to 604800"),
        ({"asyncTask": "yes"}, "asyncTask", "true or false"),
        ({"destinationConfig": {"onSuccess": "queue:x"}}, "destinationConfig.onSuccess."
         "destination", "is missing"),
        ({"destinationConfig": {"onError": {}}}, "destinationConfig", "onSuccess and/or"),
        ({"retries": 1}, "retries", "unknown field"),
        ([], "body", "JSON object"),
    ],
)
def test_bad_async_configs_name_the_field_and_the_range(body: Any, field: str, text: str) -> None:
    with pytest.raises(InvalidConfig) as refused:
        model.parse_async_config(body)
    assert refused.value.field == field and text in str(refused.value)


def test_only_the_fields_a_put_names_are_stored() -> None:
    assert model.parse_async_config({"maxAsyncRetryAttempts": 0}) == {"maxAsyncRetryAttempts": 0}
    assert model.parse_async_config({
        "asyncTask": True,
        "destinationConfig": {"onFailure": {"destination": "acs:fc:r:a:functions/g"}},
    }) == {"asyncTask": True, "onFailure": "function:g"}


@pytest.mark.parametrize("value", [-1, 10001, 1.5, None])
def test_reserved_concurrency_is_0_to_10000(value: object) -> None:
    with pytest.raises(InvalidConfig, match="reservedConcurrency"):
        model.parse_concurrency({} if value is None else {"reservedConcurrency": value})


@pytest.mark.parametrize("qualifier", ["1", "prod", "latest"])
def test_only_latest_is_a_qualifier(qualifier: str) -> None:
    with pytest.raises(InvalidConfig, match="only LATEST exists here"):
        model.check_qualifier(qualifier)
    model.check_qualifier("LATEST")
    model.check_qualifier(None)


def test_the_apis_fields_override_the_files_one_by_one_with_their_sources() -> None:
    live = model.effective(
        BASE, FILE_SOURCES, stored({"maxAsyncRetryAttempts": 0, "onFailure": "queue:x"}, 4), None
    )
    assert live.spec.max_retries == 0 and live.spec.on_failure == Destination("queue", "x")
    assert live.spec.max_event_age_s == BASE.max_event_age_s  # not named: the file's
    assert live.sources["max_retries"] == live.sources["on_failure"] == "api"
    assert live.sources["concurrency"] == "default"
    assert (live.version, live.paused) == (4, False)


def test_no_api_document_is_the_file_alone_at_version_0() -> None:
    live = model.effective(BASE, FILE_SOURCES, None, None)
    assert (live.spec, live.version, live.paused) == (BASE, 0, False)
    assert live.sources["max_retries"] == "functions.toml"


def test_reserved_concurrency_0_pauses_and_keeps_the_concurrency_any_other_sets_it() -> None:
    paused = model.effective(BASE, {}, stored({"maxAsyncRetryAttempts": 1}, 2),
                             stored({"reservedConcurrency": 0}, 7))
    assert paused.paused and paused.spec.concurrency == 8 and paused.version == 7
    assert model.concurrency_output("arn", "f", paused)["reservedConcurrency"] == 0
    wider = model.effective(BASE, {}, None, stored({"reservedConcurrency": 32}, 3))
    assert not wider.paused and wider.spec.concurrency == 32


@given(st.integers(0, 8), st.integers(1, 604800), st.booleans())
def test_every_value_in_range_is_taken_and_applied(retries: int, age: int, task: bool) -> None:
    body = {"maxAsyncRetryAttempts": retries, "maxAsyncEventAgeInSeconds": age, "asyncTask": task}
    live = model.effective(BASE, {}, stored(model.parse_async_config(body)), None)
    assert (live.spec.max_retries, live.spec.max_event_age_s, live.spec.task_mode) == (
        retries, age, task
    )
