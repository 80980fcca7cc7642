"""OpenTelemetry traces: W3C trace context carried in the envelope's ``meta``, and the
spans of one invocation's journey, named by the messaging semantic conventions.

``opentelemetry-api`` is optional (the ``tracing`` extra). Without it ``AVAILABLE`` is
False and every function here returns at its first line. With the API but no SDK, a
delivery without a ``traceparent`` costs one check; one with a ``traceparent`` has its
context passed on (retries, destinations, HTTP calls, log lines), though nothing is
recorded. With an SDK (``configure_from_env`` sets one up from the standard OTEL_*
variables, or the embedding application sets its own) every span is recorded:

    publish {ns}.invoke         PRODUCER  Client.invoke / invoke_many / call, the gateway
    process {ns}.fn.NAME        CONSUMER  one per delivery: attempt, outcome, condition,
      publish {ns}.invoke                 due time, queue wait, lateness; its children:
      publish {ns}.delay.NN                 a retry or a forward through the ladder,
      POST                      CLIENT      an HTTP function or destination,
      tasks.claim               CLIENT      task-store writes
    process ...                           the next attempt is a child of the retry's publish

Global state: the process span of the delivery being handled, in a context variable.
Each delivery runs in an asyncio task of its own, so the variable is per delivery.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from asyncinvoke import contract
from asyncinvoke._loggers import get_logger
from asyncinvoke.clock import now_ms
from asyncinvoke.contract import Envelope, Outcome

if TYPE_CHECKING:
    from asyncinvoke.topology import Names

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace import Link, NoOpTracerProvider, ProxyTracerProvider, SpanKind
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    from opentelemetry.trace.status import Status, StatusCode
except ImportError:  # the 'tracing' extra is not installed: everything here is a no-op
    AVAILABLE = False
else:
    AVAILABLE = True
    _PROPAGATOR = TraceContextTextMapPropagator()
    _TRACER = trace.get_tracer("asyncinvoke")
    _NO_SDK = (ProxyTracerProvider, NoOpTracerProvider)
    _PROVIDER_FROM_ENV = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ or not hasattr(
        trace, "_TRACER_PROVIDER"
    )

SYSTEM = "rabbitmq"
TRACEPARENT = contract.META_TRACEPARENT
TRACESTATE = contract.META_TRACESTATE
# Result names of Journal.attempt that are no condition, and the condition they stand for.
_CONDITION_OF_RESULT = {"success": contract.SUCCESS}

# From _loggers, not observability, which imports this module for its log processor.
log = get_logger(component="tracing")

# (span, token of the context attached for it), of the delivery this task handles.
_PROCESS: contextvars.ContextVar[tuple[Any, Any] | None] = contextvars.ContextVar(
    "asyncinvoke_process_span", default=None
)


def _recording() -> bool:
    """Whether an SDK is set up (spans are recorded, or at least sampled).

    Called for every delivery. ``trace.get_tracer_provider()`` looks
    OTEL_PYTHON_TRACER_PROVIDER up in os.environ on every call while no provider is set
    (a KeyError caught: about 1 µs, 4 µs on a loaded machine), so where that variable is
    unset the API's own global is read instead, which is what that call returns then.
    """
    if _PROVIDER_FROM_ENV:
        return not isinstance(trace.get_tracer_provider(), _NO_SDK)
    provider = trace._TRACER_PROVIDER
    return provider is not None and not isinstance(provider, _NO_SDK)


def _in_trace() -> bool:
    """Whether the current context belongs to a trace (to pass on)."""
    return bool(trace.get_current_span().get_span_context().is_valid)


def _wanted() -> bool:
    return AVAILABLE and (_recording() or _in_trace())


def log_ids() -> tuple[str, str] | None:
    """(trace_id, span_id) of the current context, as hex; None outside a trace."""
    if not AVAILABLE:
        return None
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return format(span_context.trace_id, "032x"), format(span_context.span_id, "016x")


def add_delivery_ids(fields: MutableMapping[str, Any]) -> None:
    """``trace_id`` and ``span_id`` of the delivery being handled, for its hot-path log
    line: one context-variable read when it has none."""
    current = _PROCESS.get()
    if current is None:
        return
    span_context = current[0].get_span_context()
    if span_context.is_valid:
        fields["trace_id"] = format(span_context.trace_id, "032x")
        fields["span_id"] = format(span_context.span_id, "016x")


def add_log_ids(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
    """structlog processor: ``trace_id`` and ``span_id`` on every line inside a trace."""
    ids = log_ids()
    if ids is not None:
        event.setdefault("trace_id", ids[0])
        event.setdefault("span_id", ids[1])
    return event


# -- propagation ------------------------------------------------------------------------


def traced_meta(meta: Mapping[str, str] | None) -> dict[str, str] | None:
    """``meta`` with the current context's ``traceparent`` (and ``tracestate``) in it;
    ``meta`` as it was outside a trace."""
    if not AVAILABLE or not _in_trace():
        return dict(meta) if meta else None
    carrier = dict(meta) if meta else {}
    carrier.pop(TRACESTATE, None)  # a previous hop's, not this context's
    _PROPAGATOR.inject(carrier)
    return carrier


def traced(envelope: Envelope) -> Envelope:
    """The envelope to publish, its meta carrying the current context (itself outside a
    trace). A copy: the envelope in hand keeps the context it arrived with."""
    if not AVAILABLE or not _in_trace():
        return envelope
    return replace(envelope, meta=traced_meta(envelope.meta))


def headers(carrier: MutableMapping[str, str]) -> None:
    """Add the current context's ``traceparent``/``tracestate`` to HTTP or AMQP headers."""
    if AVAILABLE and _in_trace():
        _PROPAGATOR.inject(carrier)


def _remote(meta: Mapping[str, str] | None, invocation_id: str) -> Any:
    """The context a ``traceparent`` in ``meta`` names; an empty one when there is none
    or it is malformed (which is logged at debug level and otherwise ignored)."""
    empty = otel_context.Context()
    if not meta or TRACEPARENT not in meta:
        return empty
    extracted = _PROPAGATOR.extract(meta, context=empty)
    if not trace.get_current_span(extracted).get_span_context().is_valid:
        log.debug("traceparent_ignored", invocation_id=invocation_id,
                  traceparent=meta[TRACEPARENT][:120], reason="not a W3C traceparent")
        return empty
    return extracted


# -- producer spans ---------------------------------------------------------------------


def _messaging(operation: str, destination: str, routing_key: str) -> dict[str, Any]:
    return {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "send" if operation == "publish" else operation,
        "messaging.operation.name": operation,
        "messaging.destination.name": destination,
        "messaging.rabbitmq.destination.routing_key": routing_key,
    }


@contextlib.contextmanager
def publishing(
    exchange: str,
    routing_key: str,
    envelope: Envelope | None = None,
    *,
    batch: int | None = None,
) -> Iterator[None]:
    """A PRODUCER span around one publish (``batch``: one span for many messages), the
    current span inside, so that what is encoded inside carries it. A replay (``dlq
    replay``) starts a trace of its own, linked to the trace of the original."""
    if not _wanted():
        yield
        return
    attributes = _messaging("publish", exchange, routing_key)
    links = None
    if envelope is not None:
        attributes["messaging.message.id"] = envelope.id
        attributes["asyncinvoke.function"] = envelope.fn
        attributes["asyncinvoke.attempt"] = envelope.attempt
        if envelope.replay:
            original = trace.get_current_span(_remote(envelope.meta, envelope.id))
            if original.get_span_context().is_valid:
                links = [Link(original.get_span_context(), {"asyncinvoke.link": "replay_of"})]
    if batch is not None:
        attributes["messaging.batch.message_count"] = batch
    with _TRACER.start_as_current_span(
        f"publish {exchange}", kind=SpanKind.PRODUCER, attributes=attributes, links=links
    ):
        yield


def describe(envelope: Envelope, body_size: int) -> None:
    """The message of the current publish span, once it is built."""
    if not AVAILABLE:
        return
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute("messaging.message.id", envelope.id)
        span.set_attribute("messaging.message.body.size", body_size)
        span.set_attribute("asyncinvoke.function", envelope.fn)
        if envelope.delay or envelope.due_at is not None:
            span.set_attribute("asyncinvoke.due_at_ms", envelope.due_at_ms())


# -- the process span of one delivery ---------------------------------------------------


def start_process(envelope: Envelope, names: Names, received_ms: int, body_size: int) -> None:
    """Open the CONSUMER span of a delivery, a child of the context in its meta, and make
    it current for the rest of the delivery (log lines, child spans, what it publishes)."""
    if not AVAILABLE:
        return
    meta = envelope.meta
    if not _recording() and not (meta and TRACEPARENT in meta):
        return
    parent = _remote(meta, envelope.id)
    queue = names.function_queue(envelope.fn)
    attributes = _messaging("process", queue, envelope.fn)
    attributes.update({
        "messaging.message.id": envelope.id,
        "messaging.message.body.size": body_size,
        "asyncinvoke.function": envelope.fn,
        "asyncinvoke.attempt": envelope.attempt,
        "asyncinvoke.created_at_ms": envelope.created_at,
        "asyncinvoke.received_at_ms": received_ms,
    })
    if envelope.replay:
        attributes["asyncinvoke.replay"] = True
    span = _TRACER.start_span(
        f"process {queue}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
    )
    token = otel_context.attach(trace.set_span_in_context(span, parent))
    _PROCESS.set((span, token))


def started(envelope: Envelope) -> None:
    """The attempt begins (after any hold for its due time): when it was due, how long it
    waited in the queue and how late it starts, as attributes and events."""
    current = _PROCESS.get()
    if current is None or not current[0].is_recording():
        return
    span = current[0]
    now = now_ms()
    due = envelope.due_at_ms()
    delayed = envelope.due_at is not None or bool(envelope.delay)
    span.set_attribute("asyncinvoke.started_at_ms", now)
    span.set_attribute("asyncinvoke.queue_wait_ms", max(0, now - max(due, envelope.created_at)))
    if delayed:
        span.set_attribute("asyncinvoke.due_at_ms", due)
        span.set_attribute("asyncinvoke.delay_ms", max(0, due - envelope.created_at))
        span.set_attribute("asyncinvoke.lateness_ms", max(0, now - due))
        span.add_event("due", timestamp=due * 1_000_000)
    span.add_event("started", {"asyncinvoke.lateness_ms": max(0, now - due) if delayed else 0},
                   timestamp=now * 1_000_000)


def end_process(result: str, outcome: Outcome | None) -> None:
    """Close the delivery's span with how it ended: ``result`` as Journal.attempt has it
    (a condition, ``success``, ``retry``, or what happened instead of running it)."""
    current = _PROCESS.get()
    if current is None:
        return
    span, token = current
    _PROCESS.set(None)
    if span.is_recording():
        span.set_attribute("asyncinvoke.outcome", result)
        condition = _CONDITION_OF_RESULT.get(result, result)
        if condition in contract.CONDITIONS:
            span.set_attribute("asyncinvoke.condition", condition)
        if outcome is not None:
            span.set_attribute("asyncinvoke.duration_ms", round(outcome.duration_ms, 3))
            if not outcome.ok and outcome.error is not None:
                span.set_attribute("error.type", outcome.error.error_type)
                span.set_status(Status(StatusCode.ERROR, outcome.error.summary()[:500]))
    span.end()
    otel_context.detach(token)


def forwarded(delay_s: int) -> None:
    """The delivery went on into the delay ladder; its span ends here."""
    current = _PROCESS.get()
    if current is not None and current[0].is_recording():
        current[0].set_attribute("asyncinvoke.forward_delay_s", delay_s)
    end_process("forwarded", None)


def finish_delivery(settled: bool) -> None:
    """The delivery's handling is over; a span still open ended without an attempt. When
    the delivery was settled that way (put back in its queue while its function is
    paused, say) the span just ends; otherwise (an exception, shutdown) it ends as an
    error: the delivery runs again."""
    current = _PROCESS.get()
    if current is None:
        return
    if settled:
        end_process("returned", None)
        return
    if current[0].is_recording():
        current[0].set_status(Status(StatusCode.ERROR, "not settled: the delivery runs again"))
    end_process("not_settled", None)


# -- child spans ------------------------------------------------------------------------


@contextlib.contextmanager
def http_call(url: str, carrier: MutableMapping[str, str]) -> Iterator[Any]:
    """A CLIENT span around one POST (an HTTP function or destination); ``carrier`` (the
    request's headers) gets its ``traceparent``. Yields the span (None outside tracing)."""
    if not _wanted():
        yield None
        return
    parts = urlsplit(url)
    attributes: dict[str, Any] = {
        "http.request.method": "POST",
        # Without user:password, which never leaves the worker in a span.
        "url.full": parts._replace(netloc=parts.hostname or "", query="").geturl()
        if parts.username or parts.password else parts._replace(query="").geturl(),
        "server.address": parts.hostname or "",
    }
    if parts.port is not None:
        attributes["server.port"] = parts.port
    with _TRACER.start_as_current_span("POST", kind=SpanKind.CLIENT,
                                       attributes=attributes) as span:
        _PROPAGATOR.inject(carrier)
        yield span


def http_status(span: Any, status: int) -> None:
    if span is not None and span.is_recording():
        span.set_attribute("http.response.status_code", status)
        if status >= 400:
            span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))


@contextlib.contextmanager
def store_write(operation: str, task_id: str, system: str) -> Iterator[None]:
    """A CLIENT span around one task-store write."""
    if not _wanted():
        yield
        return
    with _TRACER.start_as_current_span(
        f"tasks.{operation}",
        kind=SpanKind.CLIENT,
        attributes={"db.system.name": system, "db.operation.name": operation,
                    "asyncinvoke.task_id": task_id},
    ):
        yield


@contextlib.contextmanager
def serving(method: str, route: str, incoming: Mapping[str, str]) -> Iterator[None]:
    """A SERVER span around one gateway request, a child of the request's own
    ``traceparent`` header (the caller's trace) when it has a valid one."""
    if not AVAILABLE or not (_recording() or TRACEPARENT in incoming):
        yield
        return
    carrier = {key: incoming[key] for key in (TRACEPARENT, TRACESTATE) if key in incoming}
    parent = _remote(carrier, "(gateway request)")
    token = otel_context.attach(parent)
    try:
        with _TRACER.start_as_current_span(
            f"{method} {route}", kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "http.route": route},
        ):
            yield
    finally:
        otel_context.detach(token)


# -- setting up the SDK -----------------------------------------------------------------

_EXPORTER_VARIABLES = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
)


def configure_from_env(environ: Mapping[str, str] = os.environ) -> str | None:
    """At a process's start: set up the SDK when the standard OTEL_* variables ask for an
    exporter, unless something (``opentelemetry-instrument``, the embedding application)
    set up a tracer provider already. Which exporter(s), or None when nothing was done."""
    if not AVAILABLE or environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    if not any(environ.get(name) for name in _EXPORTER_VARIABLES):
        return None
    if _recording():
        return None
    names = [n.strip() for n in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")]
    names = [n for n in names if n and n != "none"]
    if not names:
        return None
    try:
        from asyncinvoke._tracing_sdk import provider
    except ImportError as exc:
        log.warning("tracing_not_configured", reason=f"{exc}",
                    fix="pip install 'asyncinvoke[otlp]' (opentelemetry-sdk and the exporter)")
        return None
    try:
        trace.set_tracer_provider(provider(names, environ))
    except (ImportError, ValueError) as exc:
        log.warning("tracing_not_configured", reason=str(exc),
                    fix="set OTEL_TRACES_EXPORTER to otlp or console, and install "
                        "'asyncinvoke[otlp]'")
        return None
    return ",".join(names)
