"""The OpenTelemetry SDK's tracer provider, built from the standard OTEL_* variables
(``tracing.configure_from_env``). A module of its own: it imports the SDK, which only
the ``otlp`` extra installs.

The SDK reads its variables itself: ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``
(the resource), ``OTEL_TRACES_SAMPLER`` and its argument, ``OTEL_BSP_*`` (batching), and
the exporter's ``OTEL_EXPORTER_OTLP_*`` (endpoint, headers, timeout, compression).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)

DEFAULT_SERVICE_NAME = "asyncinvoke"
# OTLP over HTTP unless told otherwise: the specification's default protocol.
DEFAULT_PROTOCOL = "http/protobuf"


def _otlp(environ: Mapping[str, str]) -> SpanExporter:
    protocol = environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", DEFAULT_PROTOCOL),
    )
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    elif protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
            OTLPSpanExporter,
        )
    else:
        raise ValueError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL {protocol!r} is not supported: use grpc or "
            "http/protobuf"
        )
    # Typed here: without the otlp extra installed, mypy sees the exporter as Any.
    exporter: SpanExporter = OTLPSpanExporter()
    return exporter


def provider(exporters: Sequence[str], environ: Mapping[str, str]) -> TracerProvider:
    """A tracer provider exporting to each of ``exporters`` (``otlp``, ``console``)."""
    resource = Resource.create()
    if "OTEL_SERVICE_NAME" not in environ and SERVICE_NAME not in environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    ):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    tracer_provider = TracerProvider(resource=resource)
    for name in exporters:
        if name == "otlp":
            tracer_provider.add_span_processor(BatchSpanProcessor(_otlp(environ)))
        elif name == "console":
            tracer_provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        else:
            raise ValueError(f"OTEL_TRACES_EXPORTER {name!r} is not supported: use otlp, "
                             "console or none")
    return tracer_provider
