"""OpenTelemetry spans of one request across the four stages, linked by W3C trace context.

Each stage starts one span per request, as a child of the context the stage before it sent: the gateway from the
client's `traceparent` (HTTP header or gRPC metadata), the tokenizer from TextRequest.traceparent, the scheduler
from TokenRequest.traceparent, the worker from NewSeq.traceparent. Spans leave by OTLP (gRPC) when the stage has
an endpoint (--otlp-endpoint); without one, `Tracing()` imports nothing from OpenTelemetry and every call is a
no-op returning an empty traceparent, so an untraced stack pays only an attribute check per request.
"""

from __future__ import annotations

from typing import Any

from services.common.errors import InvalidArgument

TRACEPARENT = "traceparent"  # the W3C header, and the gRPC metadata key


class NoSpan:
    """The span of an untraced request."""

    traceparent = ""

    def set(self, **attributes: Any) -> None:
        pass

    def end(self, error: str = "") -> None:
        pass


NO_SPAN = NoSpan()


class Span:
    """One stage's span of one request; `traceparent` is what the next stage's span hangs from."""

    __slots__ = ("_span", "traceparent", "_ended")

    def __init__(self, span: Any, traceparent: str) -> None:
        self._span = span
        self.traceparent = traceparent
        self._ended = False

    def set(self, **attributes: Any) -> None:
        self._span.set_attributes(attributes)

    def end(self, error: str = "") -> None:
        """Ends the span once (later calls are ignored); a non-empty `error` marks it failed."""
        if self._ended:
            return
        self._ended = True
        if error:
            from opentelemetry.trace import Status, StatusCode

            self._span.set_status(Status(StatusCode.ERROR, error))
        self._span.end()


class Tracing:
    """The tracer of one stage: no-op without a span processor (see the module docstring)."""

    def __init__(self, service: str = "", processor: Any = None) -> None:
        self.enabled = processor is not None
        self._tracer = None
        if not self.enabled:
            return
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._provider = TracerProvider(resource=Resource.create({"service.name": f"flashstream-{service}"}))
        self._provider.add_span_processor(processor)
        self._tracer = self._provider.get_tracer("flashstream")
        self._propagator = TraceContextTextMapPropagator()

    @classmethod
    def otlp(cls, service: str, endpoint: str) -> Tracing:
        """Spans batched to an OTLP gRPC collector at `endpoint` (e.g. http://otel-collector:4317); "" disables."""
        if not endpoint:
            return cls()
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError as exc:
            raise InvalidArgument(f"--otlp-endpoint needs OpenTelemetry: pip install 'flashstream[tracing]' ({exc})") \
                from None

        return cls(service, BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))

    def start(self, name: str, parent: str = "", **attributes: Any) -> Span | NoSpan:
        """A span named `name`, child of the W3C `parent` traceparent (a new trace when empty or invalid)."""
        if self._tracer is None:
            return NO_SPAN
        from opentelemetry import trace

        context = self._propagator.extract({TRACEPARENT: parent}) if parent else None
        span = self._tracer.start_span(name, context=context, kind=trace.SpanKind.SERVER, attributes=attributes)
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=trace.set_span_in_context(span))
        return Span(span, carrier.get(TRACEPARENT, ""))

    def shutdown(self) -> None:
        """Flushes and stops the exporter (on stage stop)."""
        if self._tracer is not None:
            self._provider.shutdown()
