"""FC 2.0's shapes (fc2api): services and qualifiers, InvokeFunction's headers, the
StatefulAsyncInvocation and the functions list, errors as ErrorCode/ErrorMessage."""

from __future__ import annotations

import orjson
import pytest
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict

from asyncinvoke.functions import FunctionSpec
from asyncinvoke.gateway import fc2api
from asyncinvoke.gateway.fcapi import InvalidArgument, NotFound
from asyncinvoke.tasks.states import Status
from asyncinvoke.tasks.store import Event, Task

SPECS = {
    "echo": FunctionSpec("echo", handler="m:f", service="shop", task_mode=True),
    "mail": FunctionSpec("mail", handler="m:f", service="shop"),
    "hello": FunctionSpec("hello", handler="m:f"),
}


def headers(**given: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict({k.replace("_", "-"): v for k, v in given.items()}))


def test_the_paths_of_both_versions_are_fc2_paths_and_no_others() -> None:
    assert fc2api.is_fc2_path("/2016-08-15/services/s/functions/f/invocations")
    assert fc2api.is_fc2_path("/2021-04-06/stateful-async-invocation-functions")
    assert not fc2api.is_fc2_path("/2023-03-30/functions/f/invocations")
    assert not fc2api.is_fc2_path("/2016-08-15x/services")


@pytest.mark.parametrize(
    ("segment", "query"), [("shop", None), ("shop.LATEST", None), ("shop", "LATEST"),
                           ("shop.LATEST", "LATEST"), ("shop", "")],
)
def test_latest_or_no_qualifier_names_the_service(segment: str, query: str | None) -> None:
    assert fc2api.split_service(segment, query) == "shop"


@pytest.mark.parametrize(("segment", "query"), [("shop.prod", None), ("shop", "1"),
                                                ("shop.LATEST", "prod"), ("shop.", None)])
def test_any_other_qualifier_is_a_400_saying_only_latest_exists(
    segment: str, query: str | None
) -> None:
    with pytest.raises(InvalidArgument, match="only LATEST exists here"):
        fc2api.split_service(segment, query)


def test_an_unknown_service_and_a_function_of_another_service_are_told_apart() -> None:
    services = {spec.service for spec in SPECS.values()}
    assert fc2api.find_function(SPECS, services, "shop", "echo") is SPECS["echo"]
    with pytest.raises(NotFound) as unknown:
        fc2api.find_function(SPECS, services, "nope", "echo")
    assert (unknown.value.status, unknown.value.code) == (404, "ServiceNotFound")
    with pytest.raises(NotFound) as elsewhere:
        fc2api.find_function(SPECS, services, "default", "echo")
    assert elsewhere.value.code == "FunctionNotFound"


def test_errors_are_written_in_fc2s_json() -> None:
    body = orjson.loads(fc2api.error_body(fc2api.service_not_found("x"), "rid"))
    assert set(body) == {"ErrorCode", "ErrorMessage", "RequestId"}
    assert (body["ErrorCode"], body["RequestId"]) == ("ServiceNotFound", "rid")


def test_the_stateful_headers_ask_for_task_mode_with_an_id_and_the_trace_id_goes_to_meta() -> None:
    invocation = fc2api.parse_invocation(
        headers(
            x_fc_invocation_type="Async",
            x_fc_async_delay="200",
            x_fc_stateful_async_invocation_id="order-1",
            x_fc_stateful_async_invocation_enable="true",
            x_fc_trace_id="trace-1",
        ),
        max_delay_s=3600,
    )
    assert (invocation.asynchronous, invocation.delay_s, invocation.task_id) == (
        True, 200, "order-1"
    )
    assert invocation.task is True
    assert dict(invocation.meta) == {"x-fc-trace-id": "trace-1"}
    refused = fc2api.parse_invocation(
        headers(x_fc_invocation_type="Async", x_fc_stateful_async_invocation_enable="False"),
        max_delay_s=3600,
    )
    assert refused.task is False and refused.task_id is None and refused.meta == ()


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"x_fc_stateful_async_invocation_id": "a"}, "Async invocations only"),
        ({"x_fc_stateful_async_invocation_enable": "true"}, "Async invocations only"),
        ({"x_fc_invocation_type": "Async", "x_fc_stateful_async_invocation_enable": "yes"},
         "true or false"),
        ({"x_fc_invocation_type": "Async", "x_fc_stateful_async_invocation_id": "a",
          "x_fc_stateful_async_invocation_enable": "false"}, "is false"),
        ({"x_fc_invocation_type": "Async", "x_fc_stateful_async_invocation_id": "a b"},
         "must match"),
        ({"x_fc_trace_id": "has space"}, "printable"),
        ({"x_fc_invocation_type": "Async", "x_fc_async_delay": "3601"}, "between 0 and 3600"),
    ],
)
def test_bad_invocation_headers_are_400s_that_name_the_header(
    given: dict[str, str], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        fc2api.parse_invocation(headers(**given), max_delay_s=3600)


def task() -> Task:
    return Task(
        id="inv-1",
        function="echo",
        status=Status.SUCCEEDED,
        created_at=1000,
        updated_at=3000,
        attempts=2,
        started_at=2000,
        ended_at=3000,
        payload=None,
        result=None,
        error=None,
        events=(Event(Status.ENQUEUED, 1000, ""), Event(Status.SUCCEEDED, 3000, "done")),
    )


def test_a_task_reads_as_fc2s_stateful_async_invocation() -> None:
    shaped = fc2api.stateful_invocation(task(), "shop")
    assert shaped["invocationId"] == "inv-1"
    assert (shaped["serviceName"], shaped["functionName"], shaped["qualifier"]) == (
        "shop", "echo", "LATEST"
    )
    assert (shaped["status"], shaped["startedTime"], shaped["endTime"]) == ("Succeeded", 2000, 3000)
    assert shaped["alreadyRetriedTimes"] == 1
    assert "invocationPayload" in shaped and "invocationErrorMessage" in shaped
    assert [e["eventId"] for e in shaped["events"]] == [0, 1]
    assert "invocationPayload" not in fc2api.stateful_invocation(task(), "shop", False)


def test_the_list_query_takes_fc2s_names() -> None:
    query = fc2api.parse_list_query(
        MultiDict(invocationIdPrefix="ord", status="Failed", limit="5", sortOrderByTime="asc",
                  includePayload="true", prefix="ignored")
    )
    assert (query.prefix, query.status, query.limit, query.newest_first) == (
        "ord", Status.FAILED, 5, False
    )
    assert query.include_payload is True


def test_stateful_functions_are_the_task_mode_ones_paged_by_name() -> None:
    specs = [
        *SPECS.values(),
        FunctionSpec("b", handler="m:f", service="shop", task_mode=True),
        FunctionSpec("z", handler="m:f", service="a", task_mode=True),
    ]
    first = fc2api.stateful_functions(specs, MultiDict(limit="2"))
    assert [(f["serviceName"], f["functionName"]) for f in first["data"]] == [
        ("a", "z"), ("shop", "b")
    ]
    rest = fc2api.stateful_functions(specs, MultiDict(limit="2", nextToken=first["nextToken"]))
    assert [f["functionName"] for f in rest["data"]] == ["echo"]
    assert "nextToken" not in rest
    with pytest.raises(InvalidArgument, match="limit"):
        fc2api.stateful_functions(specs, MultiDict(limit="0"))
