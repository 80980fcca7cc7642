"""tracing.py without a broker: context into meta and out of it, log ids, the SDK set up
from OTEL_* variables, and the package without opentelemetry installed at all."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from opentelemetry import trace

from asyncinvoke import tracing
from asyncinvoke.contract import Envelope
from tests.conftest import ROOT
from tests.support.tracing import _reset_globals, recording


def test_outside_a_trace_meta_is_left_as_it_was() -> None:
    assert tracing.traced_meta(None) is None
    assert tracing.traced_meta({"k": "v"}) == {"k": "v"}
    envelope = Envelope(id="a", fn="f", payload=None, created_at=1)
    assert tracing.traced(envelope) is envelope
    assert tracing.log_ids() is None


def test_inside_a_span_meta_carries_its_traceparent_and_drops_a_stale_tracestate() -> None:
    with recording(), trace.get_tracer("t").start_as_current_span("s") as span:
        meta = tracing.traced_meta({"k": "v", "tracestate": "old=1"})
        ids = tracing.log_ids()
    assert meta is not None
    trace_id, span_id = format(span.get_span_context().trace_id, "032x"), format(
        span.get_span_context().span_id, "016x"
    )
    assert meta.pop("traceparent").startswith(f"00-{trace_id}-{span_id}-")
    assert meta == {"k": "v"}
    assert ids == (trace_id, span_id)


def test_the_log_processor_adds_ids_only_inside_a_trace() -> None:
    assert tracing.add_log_ids(None, "info", {"event": "x"}) == {"event": "x"}
    with recording(), trace.get_tracer("t").start_as_current_span("s") as span:
        event = tracing.add_log_ids(None, "info", {"event": "x"})
    ids = (format(span.get_span_context().trace_id, "032x"),
           format(span.get_span_context().span_id, "016x"))
    assert (event["trace_id"], event["span_id"]) == ids


def test_the_sdk_is_set_up_only_when_otel_variables_ask_for_an_exporter() -> None:
    _reset_globals()
    try:
        assert tracing.configure_from_env({}) is None
        assert tracing.configure_from_env({"OTEL_TRACES_EXPORTER": "none"}) is None
        assert tracing.configure_from_env(
            {"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}
        ) is None
        assert tracing.configure_from_env({"OTEL_TRACES_EXPORTER": "console"}) == "console"
        provider = trace.get_tracer_provider()
        assert type(provider).__name__ == "TracerProvider"
        assert provider.resource.attributes["service.name"] == "asyncinvoke"  # type: ignore[attr-defined]
        # One set up already (opentelemetry-instrument, the application) is left alone.
        assert tracing.configure_from_env({"OTEL_TRACES_EXPORTER": "console"}) is None
        provider.shutdown()  # type: ignore[attr-defined]
    finally:
        _reset_globals()


def test_an_unknown_exporter_is_a_warning_not_a_failure() -> None:
    _reset_globals()
    try:
        assert tracing.configure_from_env({"OTEL_TRACES_EXPORTER": "zipkin"}) is None
        assert not tracing._recording()
    finally:
        _reset_globals()


BLOCK_OPENTELEMETRY = textwrap.dedent("""
    import sys

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name == "opentelemetry" or name.startswith("opentelemetry."):
                raise ImportError(f"No module named {name!r} (blocked by the test)")
            return None

    sys.meta_path.insert(0, Block())
""")


def test_without_opentelemetry_installed_everything_works_and_does_nothing() -> None:
    script = BLOCK_OPENTELEMETRY + textwrap.dedent("""
        from asyncinvoke import Client, tracing
        from asyncinvoke.contract import Envelope
        from asyncinvoke.observability import configure_logging, hot_info
        from asyncinvoke.tasks.traced import traced

        assert tracing.AVAILABLE is False
        configure_logging("json")
        hot_info("attempt", {"invocation_id": "x"})
        envelope = Envelope(id="a", fn="f", payload=None, created_at=1,
                            meta={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"})
        assert tracing.traced(envelope) is envelope
        assert tracing.traced_meta({"k": "v"}) == {"k": "v"}
        tracing.start_process(envelope, None, 0, 0)
        tracing.started(envelope)
        tracing.end_process("success", None)
        tracing.finish_delivery(False)
        assert tracing.configure_from_env({"OTEL_TRACES_EXPORTER": "otlp"}) is None
        with tracing.publishing("x", "y", envelope), tracing.http_call("http://h/", {}) as s:
            assert s is None
        built, _ = Client().envelope("f", None, meta={"k": "v"})
        assert built.meta == {"k": "v"}
        store = object()
        assert traced(store, "sqlite:///x") is store
        print("ok")
    """)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
        cwd=str(ROOT),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")
    assert '"trace_id"' not in result.stderr
