"""The OpenTelemetry SDK with an in-memory exporter, set up for one test and taken down
after it, so that other tests in the same process run with no SDK, as before."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once

from asyncinvoke import tracing


def _reset_globals() -> None:
    # What opentelemetry's own test utilities do (reset_trace_globals): the global
    # provider may otherwise be set only once per process.
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None
    # The module's proxy tracer keeps the SDK tracer it once found: a fresh one.
    tracing._TRACER = trace.get_tracer("asyncinvoke")


@contextlib.contextmanager
def recording() -> Iterator[InMemorySpanExporter]:
    """Every span ended meanwhile lands in the exporter this yields."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _reset_globals()
    trace.set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        provider.shutdown()
        _reset_globals()


def named(spans: Sequence[ReadableSpan], prefix: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name.startswith(prefix)]


def children(spans: Sequence[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    parent_id = parent.context.span_id
    return [span for span in spans if span.parent is not None and span.parent.span_id == parent_id]


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    return format(span.context.trace_id, "032x"), format(span.context.span_id, "016x")
