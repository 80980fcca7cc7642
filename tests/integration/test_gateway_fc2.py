"""The gateway's FC 2.0 face driven by FC 2.0's official SDKs, unmodified, with only the
endpoint and keys changed: ``aliyun-fc2`` (2016-08-15) and
``alibabacloud-fc-open20210406`` (2021-04-06, both of its signatures).

The SDKs are synchronous: every call runs in a thread (tests.integration.test_gateway.call).
One worker and one gateway serve the whole module (one namespace, one task store); each
test uses invocation ids of its own.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import hmac
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import fc2
import orjson
import pytest
import pytest_asyncio
from alibabacloud_fc_open20210406 import models as fc21
from alibabacloud_fc_open20210406.client import Client as Fc21Client
from alibabacloud_tea_openapi import models as openapi
from alibabacloud_tea_openapi.exceptions import ClientException
from alibabacloud_tea_util.models import RuntimeOptions

from asyncinvoke.clock import now_ms
from asyncinvoke.gateway import Gateway
from tests.conftest import Namespace, running_worker, wait_for
from tests.integration.test_gateway import AK_ID, AK_SECRET, call, running_gateway, task_store
from tests.support import handlers

FUNCTIONS = """
    [defaults]
    service = "shop"
    max_retries = 0

    [functions.clock]
    handler = "tests.support.handlers:started_at"

    [functions.echo]
    handler = "tests.support.handlers:sync_echo"
    task_mode = true

    [functions.meta]
    handler = "tests.support.handlers:meta"

    [functions.refuse]
    handler = "tests.support.handlers:refuse"

    [functions.hello]
    handler = "tests.support.handlers:echo"
    service = "default"
"""


pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    """A worker and the gateway (with keys), sharing one task store."""
    namespace = Namespace(tmp_path_factory.mktemp("fc2"))
    functions_file = namespace.functions(FUNCTIONS)
    store = task_store(namespace)
    try:
        async with running_worker(
            namespace, functions_file, task_store=store
        ), running_gateway(namespace, functions_file, task_store=store) as serving:
            yield serving
    finally:
        await namespace.cleanup()


def fc2_client(gateway: Gateway, secret: str = AK_SECRET) -> fc2.Client:
    return fc2.Client(
        endpoint=f"http://127.0.0.1:{gateway.port}",
        accessKeyID=AK_ID,
        accessKeySecret=secret,
        Timeout=30,
    )


def tea_client(gateway: Gateway, *, roa: bool = False, secret: str = AK_SECRET) -> Fc21Client:
    config = openapi.Config(
        access_key_id=AK_ID,
        access_key_secret=secret,
        endpoint=f"127.0.0.1:{gateway.port}",
        protocol="http",
        read_timeout=30_000,
    )
    if roa:
        config.signature_algorithm = "v2"  # the SDK's ROA signature (acs ID:HMAC-SHA1)
    return Fc21Client(config)


async def fc2_error(function: Any, *args: Any, **kwargs: Any) -> fc2.fc_exceptions.FcError:
    with pytest.raises(fc2.fc_exceptions.FcError) as caught:
        await call(function, *args, **kwargs)
    return caught.value


def body_of(error: fc2.fc_exceptions.FcError) -> dict[str, Any]:
    return dict(orjson.loads(error.message))


async def until_ended(
    client: Fc21Client, function: str, invocation_id: str, timeout: float = 15
) -> fc21.GetStatefulAsyncInvocationResponseBody:
    deadline = time.monotonic() + timeout
    while True:
        response = await call(
            client.get_stateful_async_invocation,
            "shop",
            function,
            invocation_id,
            fc21.GetStatefulAsyncInvocationRequest(),
        )
        if response.body.status in ("Succeeded", "Failed", "Stopped", "Expired", "Invalid"):
            return response.body
        if time.monotonic() > deadline:
            pytest.fail(f"{invocation_id} still {response.body.status} after {timeout} s")
        await asyncio.sleep(0.05)


# -- aliyun-fc2 (2016-08-15) -----------------------------------------------------------------


async def test_fc2_sdk_async_invocation_with_delay_and_stateful_id_runs_2_s_later_never_early(
    gateway: Gateway,
) -> None:
    client = fc2_client(gateway)
    invocation_id = f"order_{uuid.uuid4().hex}"
    sent = now_ms()
    response = await call(
        client.invoke_function,
        "shop",
        "clock",
        payload=b'{"n": 1}',
        headers={
            "x-fc-invocation-type": "Async",
            "x-fc-async-delay": "2",
            "x-fc-stateful-async-invocation-id": invocation_id,
        },
        qualifier="LATEST",
    )
    assert response.headers["x-fc-request-id"] == invocation_id
    task = await until_ended(tea_client(gateway), "clock", invocation_id)
    assert task.status == "Succeeded"
    started = int(task.return_payload)  # the handler's own clock when it ran
    assert started >= sent + 2000, f"ran {sent + 2000 - started} ms early"
    assert started < sent + 2000 + 5000


async def test_fc2_sdk_sync_invocation_returns_the_body_and_hands_over_the_trace_id(
    gateway: Gateway,
) -> None:
    client = fc2_client(gateway)
    echoed = await call(
        client.invoke_function, "shop", "echo", payload=b'{"name": "fc2"}',
        headers={"x-fc-invocation-type": "Sync"},
    )
    assert echoed.data == b'{"name": "fc2"}'
    traced = await call(
        client.invoke_function, "shop", "meta", payload=b"{}",
        headers={"x-fc-trace-id": "trace-42"},  # no type: Sync, as in FC 2.0
    )
    assert orjson.loads(traced.data) == {"x-fc-trace-id": "trace-42"}
    # A function of another service, by its own service.
    hello = await call(client.invoke_function, "default", "hello", payload=b"hi")
    assert hello.data == b"hi"


async def test_fc2_sdk_sees_a_failing_function_through_x_fc_error_type(
    gateway: Gateway,
) -> None:
    client = fc2_client(gateway)
    # The SDK raises on a 200 only when x-fc-error-type is set.
    error = await fc2_error(
        client.invoke_function, "shop", "refuse", payload=b"{}",
        headers={"x-fc-invocation-type": "Sync"},
    )
    assert error.status_code == 200
    assert body_of(error)["errorMessage"] == "refused: will not get better"


async def test_fc2_sdk_is_refused_with_fc2_errors_for_bad_keys_dates_services_and_qualifiers(
    gateway: Gateway,
) -> None:
    wrong = await fc2_error(
        fc2_client(gateway, secret="not-the-secret").invoke_function, "shop", "echo",
        payload=b"{}",
    )
    assert (wrong.status_code, wrong.err_code) == (403, "SignatureNotMatch")
    assert set(body_of(wrong)) == {"ErrorCode", "ErrorMessage", "RequestId"}
    client = fc2_client(gateway)
    stale_date = email.utils.formatdate(time.time() - 16 * 60, usegmt=True)
    # A 'date' header of the caller's is what the SDK signs and sends.
    stale = await fc2_error(
        client.invoke_function, "shop", "echo", payload=b"{}", headers={"date": stale_date}
    )
    assert (stale.status_code, stale.err_code) == (403, "RequestTimeTooSkewed")
    unknown_service = await fc2_error(client.invoke_function, "nope", "echo", payload=b"{}")
    assert (unknown_service.status_code, unknown_service.err_code) == (404, "ServiceNotFound")
    elsewhere = await fc2_error(client.invoke_function, "default", "echo", payload=b"{}")
    assert (elsewhere.status_code, elsewhere.err_code) == (404, "FunctionNotFound")
    qualified = await fc2_error(
        client.invoke_function, "shop", "echo", payload=b"{}", qualifier="prod"
    )
    assert (qualified.status_code, qualified.err_code) == (400, "InvalidArgument")
    assert "only LATEST" in body_of(qualified)["ErrorMessage"]


async def test_fc2_sdk_reads_the_function_async_invoke_config(
    gateway: Gateway,
) -> None:
    config = await call(
        fc2_client(gateway).get_function_async_invoke_config, "shop", "LATEST", "echo"
    )
    assert config.data["service"] == "shop"
    assert config.data["function"] == "echo"
    assert config.data["qualifier"] == "LATEST"
    assert config.data["statefulInvocation"] is True
    assert config.data["maxAsyncRetryAttempts"] == 0
    assert config.data["destinationConfig"]["onFailure"]["destination"].startswith("queue:")
    tea = await call(
        tea_client(gateway).get_function_async_invoke_config, "shop", "clock",
        fc21.GetFunctionAsyncInvokeConfigRequest(qualifier="LATEST"),
    )
    assert (tea.body.service, tea.body.function) == ("shop", "clock")
    assert tea.body.stateful_invocation is False
    listed = await call(fc2_client(gateway).list_function_async_invoke_configs, "shop", "echo")
    assert [(c["function"], c["qualifier"]) for c in listed.data["configs"]] == [
        ("echo", "LATEST")
    ]


# -- alibabacloud-fc-open20210406 (2021-04-06) ---------------------------------------------


def invoke21(
    client: Fc21Client, function: str, body: bytes, headers: fc21.InvokeFunctionHeaders
) -> fc21.InvokeFunctionResponse:
    return client.invoke_function_with_options(
        "shop", function, fc21.InvokeFunctionRequest(body=body), headers, RuntimeOptions()
    )


async def test_tea_sdk_invokes_statefully_then_gets_and_lists_the_invocation(
    gateway: Gateway,
) -> None:
    client = tea_client(gateway)
    prefix = f"tea_{uuid.uuid4().hex[:8]}"
    ids = [f"{prefix}_{n}" for n in range(2)]
    for invocation_id in ids:
        response = await call(
            invoke21, client, "clock", b'{"k": 1}',
            fc21.InvokeFunctionHeaders(
                x_fc_invocation_type="Async",
                x_fc_stateful_async_invocation_id=invocation_id,
            ),
        )
        assert response.status_code == 202
    done = await until_ended(client, "clock", ids[0])
    await until_ended(client, "clock", ids[1])
    assert done.status == "Succeeded"
    assert (done.invocation_id, done.service_name, done.function_name) == (
        ids[0], "shop", "clock"
    )
    assert done.invocation_payload == '{"k": 1}'
    assert done.already_retried_times == 0
    assert done.started_time and done.end_time and done.end_time >= done.started_time
    statuses = [event.status for event in done.events]
    assert statuses[0] == "Enqueued" and statuses[-1] == "Succeeded"
    assert "Running" in statuses
    listed = await call(
        client.list_stateful_async_invocations, "shop", "clock",
        fc21.ListStatefulAsyncInvocationsRequest(
            status="Succeeded", invocation_id_prefix=prefix, limit=1,
            sort_order_by_time="asc", include_payload=True,
        ),
    )
    assert [i.invocation_id for i in listed.body.invocations] == [ids[0]]
    assert listed.body.invocations[0].invocation_payload == '{"k": 1}'
    rest = await call(
        client.list_stateful_async_invocations, "shop", "clock",
        fc21.ListStatefulAsyncInvocationsRequest(
            status="Succeeded", invocation_id_prefix=prefix, limit=1,
            sort_order_by_time="asc", next_token=listed.body.next_token,
        ),
    )
    assert [i.invocation_id for i in rest.body.invocations] == [ids[1]]
    failed = await call(
        client.list_stateful_async_invocations, "shop", "clock",
        fc21.ListStatefulAsyncInvocationsRequest(status="Failed"),
    )
    assert failed.body.invocations == []
    functions = await call(
        client.list_stateful_async_invocation_functions,
        fc21.ListStatefulAsyncInvocationFunctionsRequest(),
    )
    assert [(f.service_name, f.function_name) for f in functions.body.data] == [
        ("shop", "echo")
    ]
    with pytest.raises(ClientException) as again:
        await call(
            invoke21, client, "clock", b"{}",
            fc21.InvokeFunctionHeaders(
                x_fc_invocation_type="Async", x_fc_stateful_async_invocation_id=ids[0]
            ),
        )
    assert again.value.status_code == 409
    assert again.value.data["ErrorCode"] == "StatefulAsyncInvocationAlreadyExists"


async def test_tea_sdk_stops_a_delayed_invocation_which_never_runs(
    gateway: Gateway,
) -> None:
    client = tea_client(gateway)
    invocation_id = f"stop_{uuid.uuid4().hex}"
    await call(
        invoke21, client, "clock", b"{}",
        fc21.InvokeFunctionHeaders(
            x_fc_invocation_type="Async",
            x_fc_stateful_async_invocation_id=invocation_id,
            common_headers={"x-fc-async-delay": "2"},
        ),
    )
    await call(
        client.stop_stateful_async_invocation, "shop", "clock", invocation_id,
        fc21.StopStatefulAsyncInvocationRequest(),
    )
    await asyncio.sleep(3)  # past its due time, with a margin
    task = await until_ended(client, "clock", invocation_id)
    assert task.status == "Stopped"
    assert "Running" not in [event.status for event in task.events]
    assert invocation_id not in [i for i, _, _ in handlers.CALLS["clock"]]


async def test_tea_sdk_roa_signature_is_checked(
    gateway: Gateway,
) -> None:
    invocation_id = f"roa_{uuid.uuid4().hex}"
    await call(
        invoke21, tea_client(gateway), "echo", b"{}",
        fc21.InvokeFunctionHeaders(
            x_fc_invocation_type="Async", x_fc_stateful_async_invocation_id=invocation_id
        ),
    )
    roa = tea_client(gateway, roa=True)
    task = await until_ended(roa, "echo", invocation_id)
    assert task.invocation_id == invocation_id
    with pytest.raises(ClientException) as caught:
        await call(
            tea_client(gateway, roa=True, secret="wrong").get_stateful_async_invocation,
            "shop", "echo", invocation_id, fc21.GetStatefulAsyncInvocationRequest(),
        )
    assert caught.value.status_code == 403
    assert caught.value.data["ErrorCode"] == "SignatureNotMatch"


# -- fc-go-sdk (2016-08-15), replayed ----------------------------------------------------------
#
# No Go toolchain or module proxy here, so this replays, byte for byte, the request that
# fc-go-sdk's Client.InvokeFunction writes for the seed's example
#     fc.NewInvokeFunctionInput(service, function).WithPayload(p).WithAsyncInvocation().
#         WithHeader("x-fc-async-delay", "1")
# as read from its source (client.go sendRequest, signature.go GetSignature, util.go MD5,
# config.go) and written by Go's net/http: Host and User-Agent first, then Content-Length,
# then the other headers sorted by their canonical names, then Accept-Encoding.
# The signature is computed here, independently of the gateway's code.

GO_USER_AGENT = "go-sdk-0.1"


def go_sdk_invoke_request(
    host: str, service: str, function: str, payload: bytes, delay: str, secret: str = AK_SECRET
) -> bytes:
    path = f"/2016-08-15/services/{service}/functions/{function}/invocations"
    headers = {
        "X-Fc-Invocation-Type": "Async",  # WithAsyncInvocation
        "x-fc-async-delay": delay,  # WithHeader, as the caller spelled it
        "Host": host,
        "X-Fc-Account-Id": "",  # Config.AccountID, empty unless set
        "User-Agent": GO_USER_AGENT,
        "Accept": "application/json",
        "Content-Type": "application/octet-stream",  # a *[]byte payload
        "Content-MD5": hashlib.md5(payload).hexdigest(),  # util.go MD5: hex, not base64
        "Date": email.utils.formatdate(usegmt=True),  # http.TimeFormat
    }
    fc_headers = sorted(
        (name.lower(), value) for name, value in headers.items()
        if name.lower().startswith("x-fc-")
    )
    to_sign = (
        "POST\n"
        + headers["Content-MD5"] + "\n"
        + headers["Content-Type"] + "\n"
        + headers["Date"] + "\n"
        + "".join(f"{name}:{value}\n" for name, value in fc_headers)
        + path
    )
    digest = hmac.new(secret.encode(), to_sign.encode(), hashlib.sha256).digest()
    headers["Authorization"] = f"FC {AK_ID}:{base64.b64encode(digest).decode()}"
    # net/http writes canonical header names (textproto.CanonicalMIMEHeaderKey).
    canonical = {"-".join(part.capitalize() for part in k.split("-")): v
                 for k, v in headers.items()}
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {canonical.pop('Host')}",
        f"User-Agent: {canonical.pop('User-Agent')}",
        f"Content-Length: {len(payload)}",
        *(f"{name}: {value}" for name, value in sorted(canonical.items())),
        "Accept-Encoding: gzip",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


async def send_raw(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 exchange on a fresh connection: status, headers, body."""
    async with asyncio.timeout(15):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(request)
            await writer.drain()
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            status_line, *header_lines = head.rstrip("\r\n").split("\r\n")
            headers = {}
            for line in header_lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
        finally:
            writer.close()
    return int(status_line.split()[1]), headers, body


async def test_go_sdk_invoke_request_replayed_byte_for_byte_runs_after_its_delay(
    gateway: Gateway,
) -> None:
    host = f"127.0.0.1:{gateway.port}"
    request = go_sdk_invoke_request(host, "shop", "clock", b'{"from": "go"}', delay="1")
    sent = time.time()
    status, headers, body = await send_raw(gateway.port, request)
    assert (status, body) == (202, b"")
    invocation_id = headers["x-fc-request-id"]

    def ran() -> list[float]:
        return [t for i, _, t in handlers.CALLS["clock"] if i == invocation_id]

    await wait_for(lambda: bool(ran()), 10, f"Go-signed invocation {invocation_id} to run")
    assert ran()[0] >= sent + 1.0, "ran before its x-fc-async-delay"


async def test_go_sdk_invoke_request_is_refused_when_a_header_or_the_body_is_changed(
    gateway: Gateway,
) -> None:
    host = f"127.0.0.1:{gateway.port}"
    request = go_sdk_invoke_request(host, "shop", "clock", b'{"from": "go"}', delay="1")
    no_delay = request.replace(b"X-Fc-Async-Delay: 1\r\n", b"X-Fc-Async-Delay: 0\r\n")
    status, _, body = await send_raw(gateway.port, no_delay)
    assert (status, orjson.loads(body)["ErrorCode"]) == (403, "SignatureNotMatch")
    other_body = request.replace(b'{"from": "go"}', b'{"from": "me"}')
    status, _, body = await send_raw(gateway.port, other_body)
    assert (status, orjson.loads(body)["ErrorCode"]) == (403, "InvalidDigest")
    wrong_secret = go_sdk_invoke_request(host, "shop", "clock", b"{}", "1", secret="guess")
    status, _, body = await send_raw(gateway.port, wrong_secret)
    assert (status, orjson.loads(body)["ErrorCode"]) == (403, "SignatureNotMatch")


# -- without access keys -------------------------------------------------------------------------


async def test_without_keys_the_fc2_paths_are_guarded_like_the_others(tmp_path: Path) -> None:
    namespace = Namespace(tmp_path)
    try:
        async with running_gateway(namespace, namespace.functions(FUNCTIONS), keys={}) as keyless:
            client = fc2.Client(
                endpoint=f"http://127.0.0.1:{keyless.port}", accessKeyID="any",
                accessKeySecret="any",
            )
            response = await call(
                client.invoke_function, "default", "hello", payload=b"{}",
                headers={"x-fc-invocation-type": "Async"},
            )
            assert response.headers["x-fc-request-id"]
            # What a web page's form could send: no x-fc-invocation-type, text/plain.
            form_post = (
                f"POST /2016-08-15/services/default/functions/hello/invocations HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{keyless.port}\r\nContent-Type: text/plain\r\n"
                f"Content-Length: 2\r\n\r\nhi"
            ).encode()
            status, _, body = await send_raw(keyless.port, form_post)
            assert (status, orjson.loads(body)["ErrorCode"]) == (403, "AccessDenied")
    finally:
        await namespace.cleanup()


async def test_fc2_sdk_creates_reads_lists_updates_and_deletes_a_timer_trigger(
    gateway: Gateway,
) -> None:
    client = fc2_client(gateway)
    config = {"cronExpression": "0 0 2 * * *", "payload": "nightly", "enable": True}
    created = await call(client.create_trigger, "shop", "echo", "fc2-nightly", "timer", config,
                         None, None)
    assert created.data["triggerName"] == "fc2-nightly"
    assert created.data["triggerConfig"] == config  # an object in 2.0, not a JSON string
    got = await call(client.get_trigger, "shop", "echo", "fc2-nightly")
    assert got.data["triggerType"] == "timer"
    listed = await call(client.list_triggers, "shop", "echo")
    assert [t["triggerName"] for t in listed.data["triggers"]] == ["fc2-nightly"]
    updated = await call(client.update_trigger, "shop", "echo", "fc2-nightly",
                         triggerConfig={**config, "enable": False})
    assert updated.data["status"] == "Disabled"
    await call(client.delete_trigger, "shop", "echo", "fc2-nightly")
    with pytest.raises(fc2.fc_exceptions.FcError) as missing:
        await call(client.get_trigger, "shop", "echo", "fc2-nightly")
    assert missing.value.status_code == 404
