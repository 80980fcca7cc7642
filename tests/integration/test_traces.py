"""OpenTelemetry traces of real invocations: the worker, the gateway and the client run in
this process with the SDK's in-memory exporter, on the real broker; and one worker runs
as a process without the SDK, passing a producer's context on by propagation alone.

One trace follows an invocation: the producer's publish → the process span of each
attempt (a retry's publish between them) → the destination's publish → the process span
of the destination function.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping

import orjson
import pika
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from asyncinvoke import Client, SyncClient, contract, dlq, tracing
from asyncinvoke.gateway import Gateway
from tests.conftest import AMQP_URL, Namespace, WorkerProcess, running_worker, wait_for
from tests.integration.helpers import Connection, publish_raw
from tests.support.tracing import children, hex_ids, named, recording

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with recording() as exporter:
        yield exporter


def task_store(namespace: Namespace) -> str:
    return f"sqlite:///{namespace.tmp_path / 'tasks.db'}"


async def until_span(exporter: InMemorySpanExporter, name: str, timeout: float = 20) -> None:
    await wait_for(lambda: bool(named(exporter.get_finished_spans(), name)), timeout, name)


def one(spans: list[ReadableSpan], what: str) -> ReadableSpan:
    assert len(spans) == 1, f"{what}: {[span.name for span in spans]}"
    return spans[0]


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


class Hook:
    """An HTTP function or destination that keeps the headers of each request."""

    def __init__(self) -> None:
        self.headers: list[Mapping[str, str]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.headers.append(request.headers.copy())
        await request.read()
        return web.json_response({"ok": True})


@pytest.fixture
async def hook() -> AsyncIterator[tuple[Hook, str]]:
    receiver = Hook()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    async with TestServer(app, host="127.0.0.1") as server:
        yield receiver, str(server.make_url("/hook"))


async def test_one_trace_follows_a_retry_and_a_function_destination(
    namespace: Namespace, spans: InMemorySpanExporter
) -> None:
    ns = namespace.ns
    spec = namespace.functions("""
        [functions.flaky]
        handler = "tests.support.handlers:fail_until"
        task_mode = true
        max_retries = 2
        backoff = { initial = 1.3, jitter = 0.0 }
        on_success = "function:after"

        [functions.after]
        handler = "tests.support.handlers:meta"
    """)
    store = task_store(namespace)
    settings = namespace.settings.with_overrides(task_store=store)
    async with running_worker(namespace, spec, task_store=store), Client(
        settings=settings
    ) as client:
        with trace.get_tracer("test").start_as_current_span("caller") as caller:
            invocation_id = await client.invoke("flaky", {"fail_times": 1}, task=True)
        await until_span(spans, f"process {ns}.fn.after")
    finished = spans.get_finished_spans()
    journey = [span for span in finished if span.context.trace_id == caller.context.trace_id]
    assert len(journey) == len(finished), "every span belongs to the caller's trace"

    publish = one(children(finished, caller), "the client's publish")
    assert publish.name == f"publish {ns}.invoke" and publish.kind is SpanKind.PRODUCER
    assert publish.attributes is not None
    assert publish.attributes["messaging.system"] == "rabbitmq"
    assert publish.attributes["messaging.operation.type"] == "send"
    assert publish.attributes["messaging.destination.name"] == f"{ns}.invoke"
    assert publish.attributes["messaging.message.id"] == invocation_id
    assert named(children(finished, publish), "tasks.create"), "the task's insert is a child"

    first = one(named(children(finished, publish), "process"), "attempt 0")
    assert first.name == f"process {ns}.fn.flaky" and first.kind is SpanKind.CONSUMER
    assert first.attributes is not None
    assert first.attributes["messaging.message.id"] == invocation_id
    assert first.attributes["messaging.operation.type"] == "process"
    assert first.attributes["asyncinvoke.attempt"] == 0
    assert first.attributes["asyncinvoke.outcome"] == "retry"
    assert "asyncinvoke.condition" not in first.attributes
    assert first.attributes["error.type"] == "RuntimeError"
    assert first.status.status_code is StatusCode.ERROR
    assert named(children(finished, first), "tasks.claim"), "the claim is a child"

    retry = one(named(children(finished, first), "publish"), "the retry's publish")
    assert retry.name.startswith(f"publish {ns}.delay."), "the backoff waits in the ladder"
    assert retry.attributes is not None and retry.attributes["asyncinvoke.attempt"] == 1

    second = one(children(finished, retry), "attempt 1")
    assert second.name == f"process {ns}.fn.flaky"
    attributes = second.attributes
    assert attributes is not None
    assert attributes["asyncinvoke.attempt"] == 1
    assert attributes["asyncinvoke.outcome"] == "success"
    assert attributes["asyncinvoke.condition"] == "Success"
    assert second.status.status_code is StatusCode.UNSET
    # The backoff is recorded: when it was due, and how late it started.
    due, started = attributes["asyncinvoke.due_at_ms"], attributes["asyncinvoke.started_at_ms"]
    assert isinstance(due, int) and isinstance(started, int)
    assert attributes["asyncinvoke.lateness_ms"] == started - due >= 0
    assert started - due < 1000, "a retry starts within a second of its due time"
    assert first.end_time is not None
    assert due * 1_000_000 - first.end_time >= 1_200_000_000, "it waited out the backoff"
    assert [event.name for event in second.events] == ["due", "started"]

    destination = one(named(children(finished, second), "publish"), "the destination's publish")
    assert destination.name == f"publish {ns}.invoke"
    assert destination.attributes is not None
    assert destination.attributes["messaging.rabbitmq.destination.routing_key"] == "after"

    after = one(children(finished, destination), "the destination function")
    assert after.name == f"process {ns}.fn.after"
    assert after.attributes is not None and after.attributes["asyncinvoke.outcome"] == "success"


@pytest.mark.parametrize("path", [
    "/2023-03-30/functions/web/invocations",
    "/2016-08-15/services/default/functions/web/invocations",  # FC 2.0's face
])
async def test_a_traceparent_sent_to_the_gateway_by_curl_is_the_parent(
    namespace: Namespace, spans: InMemorySpanExporter, hook: tuple[Hook, str], path: str
) -> None:
    receiver, url = hook
    ns = namespace.ns
    spec = namespace.functions(f"""
        [functions.web]
        url = "{url}"
        on_success = "{url}"
    """)
    gateway = Gateway(namespace.settings, spec, {})
    await gateway.start("127.0.0.1", 0)
    try:
        async with running_worker(namespace, spec):
            curl = await asyncio.create_subprocess_exec(
                "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST",
                "-H", "x-fc-invocation-type: Async", "-H", f"traceparent: {TRACEPARENT}",
                "--data-binary", "{}",
                f"http://127.0.0.1:{gateway.port}{path}",
                stdout=asyncio.subprocess.PIPE,
            )
            out, _ = await asyncio.wait_for(curl.communicate(), 20)
            assert out == b"202"
            await wait_for(lambda: len(receiver.headers) >= 2, 20, "the function and its hook")
            await until_span(spans, f"process {ns}.fn.web")
    finally:
        await gateway.stop()
    finished = spans.get_finished_spans()
    assert {format(span.context.trace_id, "032x") for span in finished} == {TRACE_ID}
    server = one([s for s in finished if s.kind is SpanKind.SERVER], "the gateway's span")
    assert parent_of(server) == int(PARENT_ID, 16), "curl's traceparent is the parent"
    publish = one(children(finished, server), "the gateway's publish")
    process = one(children(finished, publish), "the attempt")
    posts = children(finished, process)
    assert [span.name for span in posts if span.kind is SpanKind.CLIENT] == ["POST", "POST"]
    # The HTTP function and the HTTP destination each got the context of their POST.
    sent = sorted(headers["traceparent"] for headers in receiver.headers)
    assert sent == sorted(f"00-{TRACE_ID}-{hex_ids(post)[1]}-01" for post in posts)


async def test_an_envelope_published_by_pika_with_a_traceparent_joins_that_trace(
    namespace: Namespace, spans: InMemorySpanExporter
) -> None:
    spec = namespace.functions("""
        [functions.plain]
        handler = "tests.support.handlers:noop"
    """)
    invocation_id = f"pika_{uuid.uuid4().hex[:8]}"
    wire = {"v": 1, "id": invocation_id, "fn": "plain", "payload": None,
            "meta": {"traceparent": TRACEPARENT, "tracestate": "vendor=1"}}
    async with running_worker(namespace, spec):
        await asyncio.to_thread(_pika_publish, namespace, wire)
        await until_span(spans, f"process {namespace.ns}.fn.plain")
    process = one(spans.get_finished_spans(), "the only span")
    assert format(process.context.trace_id, "032x") == TRACE_ID
    assert parent_of(process) == int(PARENT_ID, 16)
    assert process.parent is not None and process.parent.is_remote
    assert process.parent.trace_state.get("vendor") == "1"
    assert process.attributes is not None
    assert process.attributes["messaging.message.id"] == invocation_id


async def test_a_delayed_invocation_forwarded_through_the_ladder_stays_in_its_trace(
    namespace: Namespace, spans: InMemorySpanExporter, amqp: Connection
) -> None:
    spec = namespace.functions("""
        [functions.plain]
        handler = "tests.support.handlers:noop"
    """)
    async with running_worker(namespace, spec):
        await publish_raw(amqp, namespace.names, {
            "v": 1, "id": "later", "fn": "plain", "payload": None, "delay": 2,
            "meta": {"traceparent": TRACEPARENT},
        })
        await wait_for(
            lambda: len(named(spans.get_finished_spans(), "process")) >= 2, 20, "two deliveries"
        )
    finished = spans.get_finished_spans()
    assert {format(span.context.trace_id, "032x") for span in finished} == {TRACE_ID}
    forward = one([s for s in finished if parent_of(s) == int(PARENT_ID, 16)], "the forward")
    assert forward.attributes is not None
    assert forward.attributes["asyncinvoke.outcome"] == "forwarded"
    assert forward.attributes["asyncinvoke.forward_delay_s"] in (1, 2)
    into_ladder = one(children(finished, forward), "the forward's publish")
    assert into_ladder.name.startswith(f"publish {namespace.ns}.delay.")
    run = one(children(finished, into_ladder), "the attempt")
    assert run.attributes is not None and run.attributes["asyncinvoke.outcome"] == "success"
    lateness = run.attributes["asyncinvoke.lateness_ms"]
    assert isinstance(lateness, int) and 0 <= lateness < 1000


async def test_sync_client_calls_from_another_thread_publish_in_the_callers_trace(
    namespace: Namespace, spans: InMemorySpanExporter
) -> None:
    spec = namespace.functions("""
        [functions.plain]
        handler = "tests.support.handlers:noop"
    """)

    def invoke_in_a_span() -> ReadableSpan:
        with trace.get_tracer("test").start_as_current_span("caller") as caller, SyncClient(
            settings=namespace.settings
        ) as client:
            client.invoke("plain", None)
        assert isinstance(caller, ReadableSpan)
        return caller

    async with running_worker(namespace, spec):
        caller = await asyncio.to_thread(invoke_in_a_span)
        await until_span(spans, f"process {namespace.ns}.fn.plain")
    finished = spans.get_finished_spans()
    publish = one(children(finished, caller), "the SyncClient's publish")
    one(children(finished, publish), "the attempt")


def _pika_publish(namespace: Namespace, wire: dict[str, object]) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(
            namespace.names.invoke, str(wire["fn"]), contract.pack(wire),
            pika.BasicProperties(content_type=contract.CONTENT_TYPE, delivery_mode=2),
            mandatory=True,
        )
    finally:
        connection.close()


async def test_a_malformed_traceparent_is_ignored_with_a_debug_line_and_the_invocation_runs(
    namespace: Namespace, spans: InMemorySpanExporter, amqp: Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    captured = structlog.testing.CapturingLogger()
    monkeypatch.setattr(tracing, "log", captured)
    spec = namespace.functions("""
        [functions.plain]
        handler = "tests.support.handlers:noop"
    """)
    async with running_worker(namespace, spec):
        await publish_raw(amqp, namespace.names, {
            "v": 1, "id": "bad_trace", "fn": "plain", "payload": None,
            "meta": {"traceparent": "00-not-a-trace-01"},
        })
        await until_span(spans, f"process {namespace.ns}.fn.plain")
    process = one(spans.get_finished_spans(), "the only span")
    assert process.parent is None, "a trace of its own"
    assert process.attributes is not None
    assert process.attributes["asyncinvoke.outcome"] == "success"
    ignored = [call for call in captured.calls if call.args == ("traceparent_ignored",)]
    assert [call.method_name for call in ignored] == ["debug"]
    assert ignored[0].kwargs["invocation_id"] == "bad_trace"


async def test_a_replay_starts_a_trace_linked_to_the_original(
    namespace: Namespace, spans: InMemorySpanExporter
) -> None:
    spec = namespace.functions("""
        [functions.once]
        handler = "tests.support.handlers:refuse_first"
    """)
    async with running_worker(namespace, spec), Client(settings=namespace.settings) as client:
        invocation_id = await client.invoke("once", None)
        await until_span(spans, f"process {namespace.ns}.fn.once")
        original = one(named(spans.get_finished_spans(), f"publish {namespace.ns}.invoke"),
                       "the original publish")
        spans.clear()
        await asyncio.wait_for(wait_failed(namespace, invocation_id), 20)
        await dlq.replay(namespace.settings, dlq.Selector(frozenset({invocation_id})))
        await until_span(spans, f"process {namespace.ns}.fn.once")
    finished = spans.get_finished_spans()
    replay = one([s for s in finished if s.name == f"publish {namespace.ns}.invoke"], "replay")
    assert replay.parent is None, "a replay starts a trace of its own"
    assert replay.context.trace_id != original.context.trace_id
    assert [link.context.span_id for link in replay.links] == [original.context.span_id]
    process = one(children(finished, replay), "the replayed attempt")
    assert process.attributes is not None and process.attributes["asyncinvoke.replay"] is True


async def wait_failed(namespace: Namespace, invocation_id: str) -> None:
    """Until the failure queue holds the record of ``invocation_id``."""
    ids: list[str] = []
    while invocation_id not in ids:
        await asyncio.sleep(0.05)
        ids.clear()
        with contextlib.suppress(dlq.EmptyQueue):
            await dlq.list_records(namespace.settings, dlq.ALL, lambda s: ids.append(str(s.id)))


async def test_without_an_sdk_the_context_still_reaches_http_functions_and_log_lines(
    namespace: Namespace, amqp: Connection, hook: tuple[Hook, str]
) -> None:
    receiver, url = hook
    config = namespace.tmp_path / "web.toml"
    config.write_text(f'[functions.web]\nurl = "{url}"\n')
    namespace.function_names.add("web")
    worker = WorkerProcess(namespace, config)
    await worker.start()
    try:
        await publish_raw(amqp, namespace.names, {
            "v": 1, "id": "no_sdk", "fn": "web", "payload": {"a": 1},
            "meta": {"traceparent": TRACEPARENT},
        })
        await wait_for(lambda: bool(receiver.headers), 20, "the HTTP function's request")
        await wait_for(lambda: any('"attempt"' in line for line in worker.lines), 20,
                       "the attempt's log line")
    finally:
        await worker.terminate()
    # No span is recorded, so the producer's span is the context passed on.
    assert receiver.headers[0]["traceparent"] == TRACEPARENT
    attempt = next(orjson.loads(line) for line in worker.lines if '"attempt"' in line)
    assert (attempt["trace_id"], attempt["span_id"]) == (TRACE_ID, PARENT_ID)


async def test_a_worker_set_up_by_otel_variables_exports_its_spans_over_otlp(
    namespace: Namespace, amqp: Connection
) -> None:
    """OTEL_EXPORTER_OTLP_ENDPOINT alone: the worker sets up the SDK and the OTLP/HTTP
    exporter, and its spans reach the collector (here a receiver that keeps the bodies)."""
    bodies: list[bytes] = []

    async def collector(request: web.Request) -> web.Response:
        bodies.append(await request.read())
        return web.Response(content_type="application/x-protobuf", body=b"")

    app = web.Application()
    app.router.add_post("/v1/traces", collector)
    config = namespace.tmp_path / "plain.toml"
    config.write_text('[functions.plain]\nhandler = "tests.support.handlers:noop"\n')
    namespace.function_names.add("plain")
    async with TestServer(app, host="127.0.0.1") as server:
        worker = WorkerProcess(
            namespace, config,
            OTEL_EXPORTER_OTLP_ENDPOINT=str(server.make_url("")).rstrip("/"),
            OTEL_SERVICE_NAME="otlp-test-worker", OTEL_BSP_SCHEDULE_DELAY="100",
        )
        await worker.start()
        try:
            await publish_raw(amqp, namespace.names, {
                "v": 1, "id": "exported_one", "fn": "plain", "payload": None,
                "meta": {"traceparent": TRACEPARENT},
            })
            await wait_for(lambda: any(b"exported_one" in body for body in bodies), 20,
                           "the process span at the collector")
        finally:
            await worker.terminate()
    assert any('"tracing_configured"' in line for line in worker.lines)
    exported = next(body for body in bodies if b"exported_one" in body)
    assert bytes.fromhex(TRACE_ID) in exported and b"otlp-test-worker" in exported


async def test_every_write_the_task_store_protocol_marks_is_a_span_and_reads_are_not(
    spans: InMemorySpanExporter, namespace: Namespace
) -> None:
    """tasks/traced.py spans what tasks/store.py marks ``@write``, on a real SQLite store."""
    from asyncinvoke.tasks import open_store
    from asyncinvoke.tasks.states import Status
    from asyncinvoke.tasks.store import writes
    from asyncinvoke.tasks.traced import traced

    url = f"sqlite:///{namespace.tmp_path / 'traced.db'}"
    store = traced(open_store(url), url)
    await store.open()
    try:
        with trace.get_tracer("test").start_as_current_span("caller"):
            await store.create("a", "f", b"x", 1)
            await store.ensure("b", "f", None, 1)
            await store.claim("a", 1, 2, 1000)
            await store.transition("a", Status.FAILED, 3, error="boom")
            await store.reopen("a", 4, "replayed")
            await store.request_stop("a", 5)
            await store.rerun("a", 6, "again")
            assert (await store.get("a")) is not None
            await store.list(function="f")
    finally:
        await store.close()
    made = [span.name for span in spans.get_finished_spans() if span.name != "caller"]
    assert made == [
        "tasks.create", "tasks.ensure", "tasks.claim", "tasks.transition.Failed",
        "tasks.reopen", "tasks.request_stop", "tasks.rerun",
    ]
    assert {name.split(".")[1] for name in made} == set(writes()), "a marked write untested"
