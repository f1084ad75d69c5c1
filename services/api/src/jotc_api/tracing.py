"""OpenTelemetry traces: on when the standard OTEL_* variables ask for them, otherwise nothing at all.

Tracing is on when ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, ``console``) or an OTLP
endpoint is set (``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), and off
when neither is, when ``OTEL_TRACES_EXPORTER=none`` or ``OTEL_SDK_DISABLED=true``. Off, no tracer
provider is installed and ``tracer`` stays None: every span site checks that one module attribute
(``span()`` hands back a shared no-op context), so the request path pays one global read.

On, the SDK reads everything else from the environment as it documents it: the sampler
(``OTEL_TRACES_SAMPLER``, ``OTEL_TRACES_SAMPLER_ARG``), the resource (``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``; the service name defaults to the command's), the batch processor
(``OTEL_BSP_*``), the OTLP/HTTP exporter (``OTEL_EXPORTER_OTLP_*``: endpoint, headers, timeout,
compression, certificates) and the propagators (``OTEL_PROPAGATORS``, W3C trace context and
baggage by default). OTLP goes over HTTP with protobuf; another protocol is refused at start.

The recorder's batch commit and the rate limiter's sync to Redis serve many requests, so each
is a trace of its own that links to the sampled requests it carried (the sync's: ``linked_root``);
``LinkedSampler`` records such a span whenever a span it links to was sampled (the configured
sampler decides everything else), so a sampled request's commit or sync is never missing.

The served routes' server span (served.py) carries the HTTP attributes the ASGI instrumentation
behind Litestar's integration gives the other routes' spans, computed by that library's own
functions (``http_server_attributes``, ``set_http_status``) so the two cannot drift.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from contextvars import ContextVar
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanContext, SpanKind, Tracer
from opentelemetry.util.types import Attributes, AttributeValue

from jotc_api import __version__

# The tracer of this process, or None: tracing is off. Read at every span site.
tracer: Tracer | None = None
provider: TracerProvider | None = None
propagation_fields: frozenset[bytes] = frozenset()  # the header names the propagators read

NO_SPAN: AbstractContextManager[None] = contextlib.nullcontext()
# The server span of the request being answered, as (trace_id, span_id) in hex and whether it was
# sampled, for the access line (pipeline.py). Set only while tracing is on.
SERVER_SPAN: ContextVar[tuple[str, str, bool] | None] = ContextVar("jotc_server_span", default=None)
OTLP_PROTOCOL = "http/protobuf"
# What a request's URL holds beyond its path: the query names the user of a text/plain POST /jumps.
QUERY_ATTRIBUTES = ("http.url", "url.full", "url.query")


class TracingError(ValueError):
    """An OTEL_* value this build cannot honour: start-up stops, naming it."""


def wanted(env: Mapping[str, str]) -> bool:
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def exporter_names(env: Mapping[str, str]) -> list[str]:
    """The exporters OTEL_TRACES_EXPORTER names (otlp by default); TracingError for one this build
    lacks. The command checks this before binding its port (server.py)."""
    names = [name.strip().lower() for name in (env.get("OTEL_TRACES_EXPORTER") or "otlp").split(",")]
    for name in names:
        if name not in {"otlp", "console", "none"}:
            raise TracingError(f"OTEL_TRACES_EXPORTER must be otlp, console or none, got {name!r}")
    if "otlp" in names:
        protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        if protocol and protocol.strip() != OTLP_PROTOCOL:
            raise TracingError(f"OTEL_EXPORTER_OTLP_PROTOCOL must be {OTLP_PROTOCOL}, got {protocol!r}")
    return [name for name in names if name != "none"]


def exporters_from(env: Mapping[str, str]) -> list[SpanExporter]:
    exporters: list[SpanExporter] = []
    for name in exporter_names(env):
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporters.append(OTLPSpanExporter())  # endpoint, headers, timeout...: OTEL_EXPORTER_OTLP_*
        else:
            exporters.append(ConsoleSpanExporter(out=sys.stderr))  # stdout carries the JSON log lines
    return exporters


def check(env: Mapping[str, str] = os.environ) -> None:
    """Raise TracingError when the OTEL_* variables ask for what this build cannot do."""
    if wanted(env):
        exporter_names(env)


class LinkedSampler(Sampler):
    """The configured sampler, except that a span linking to a sampled span is sampled too."""

    def __init__(self, configured: Sampler) -> None:
        self.configured = configured

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        if links and any(link.context.trace_flags.sampled for link in links):
            parent = trace.get_current_span(parent_context).get_span_context()
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes, parent.trace_state)
        return self.configured.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"LinkedSampler{{{self.configured.get_description()}}}"


def configure(
    service: str, env: Mapping[str, str] = os.environ, *, processor: SpanProcessor | None = None
) -> Tracer | None:
    """Turn tracing on in this process when ``env`` asks for it (``processor``: tests' own, which
    turns it on regardless), else off. Returns the tracer, or None."""
    global tracer, provider, propagation_fields
    shutdown()
    if processor is None and not wanted(env):
        return None
    processors: list[SpanProcessor] = (
        [processor] if processor is not None else [BatchSpanProcessor(exporter) for exporter in exporters_from(env)]
    )
    detected = Resource.create()
    defaults = {SERVICE_NAME: service, SERVICE_VERSION: __version__}
    named = not str(detected.attributes.get(SERVICE_NAME, "")).startswith("unknown_service")
    resource = Resource(defaults).merge(detected) if named else detected.merge(Resource(defaults))
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    provider.sampler = LinkedSampler(provider.sampler)  # before the first tracer, which keeps it
    for each in processors:
        provider.add_span_processor(each)
    tracer = provider.get_tracer("jotc_api", __version__)
    propagation_fields = frozenset(field.lower().encode("latin-1") for field in propagate.get_global_textmap().fields)
    return tracer


def shutdown() -> None:
    """Export what is left and turn tracing off."""
    global tracer, provider
    if provider is not None:
        provider.shutdown()
    tracer = provider = None


def span(name: str, attributes: Attributes = None) -> AbstractContextManager[Any]:
    """A child span of the current one (a root when there is none), or a no-op: when tracing is
    off, or when the current span was not sampled, since its children would not be either and
    making them cost more than the request's own work (docs/performance.md#tracing)."""
    if tracer is None:
        return NO_SPAN
    current = trace.get_current_span()
    if current is not trace.INVALID_SPAN and not current.is_recording():
        return NO_SPAN
    # A refusal raised through a span (a Problem: 4xx, or 503) is an answer, not the span's failure;
    # the server span's status says whether the request failed.
    # Nor is it recorded: a refusal's message may quote the request's body.
    return tracer.start_as_current_span(
        name, attributes=attributes, record_exception=False, set_status_on_exception=False
    )


def linked_root(
    name: str, carried: Sequence[SpanContext], attributes: Attributes = None
) -> AbstractContextManager[trace.Span | None]:
    """A span that is a trace of its own (whatever the current context holds), linked to the
    sampled requests it serves (``carried``): the recorder's batch commit, the rate limiter's sync;
    a no-op while tracing is off."""
    if tracer is None:
        return NO_SPAN
    links = [Link(context) for context in carried]
    return tracer.start_as_current_span(name, Context(), links=links, attributes=attributes)


def incoming(headers: Iterable[tuple[bytes, bytes]]) -> Context | None:
    """The caller's context from the propagators' headers (traceparent, tracestate, baggage by
    default), read in one pass over the request's headers; None without any."""
    carrier: dict[str, str] = {}
    for name, value in headers:
        if name in propagation_fields:
            carrier[name.decode("latin-1")] = value.decode("latin-1")
    return propagate.extract(carrier) if carrier else None


def sampled_context() -> SpanContext | None:
    """The current span's context when it is sampled (what a batch span links to), else None."""
    context = trace.get_current_span().get_span_context()
    return context if context.trace_flags.sampled else None


def ids(context: SpanContext) -> tuple[str, str]:
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def note_server_span(server: trace.Span, _: object = None) -> None:
    """Remember the request's server span for its access line (Litestar's server_request_hook)."""
    context = server.get_span_context()
    if context.is_valid:
        SERVER_SPAN.set((*ids(context), context.trace_flags.sampled))


@functools.cache
def http_conventions() -> Any:
    """The HTTP semantic conventions a served route's span records: the stable ones, and the older
    names too while Litestar's integration records those (OTEL_SEMCONV_STABILITY_OPT_IN unset, or
    http/dup), so one query finds every route's spans."""
    from opentelemetry.instrumentation._semconv import (
        _OpenTelemetrySemanticConventionStability as Stability,
    )
    from opentelemetry.instrumentation._semconv import (
        _OpenTelemetryStabilitySignalType,
        _StabilityMode,
    )

    Stability._initialize()  # type: ignore[no-untyped-call]
    mode = Stability._get_opentelemetry_stability_opt_in_mode(_OpenTelemetryStabilitySignalType.HTTP)
    return _StabilityMode.HTTP_DUP if mode is _StabilityMode.DEFAULT else mode


def http_server_attributes(scope: Mapping[str, Any], route: str) -> dict[str, AttributeValue]:
    """A served request's server span attributes, as the ASGI instrumentation records them (method,
    scheme, path, server address and port, protocol version, client address and port, user
    agent), with ``http.route``, and without the query (QUERY_ATTRIBUTES)."""
    from opentelemetry.instrumentation.asgi import collect_request_attributes

    attributes: dict[str, AttributeValue] = collect_request_attributes(  # type: ignore[no-untyped-call]
        scope, http_conventions()
    )
    for name in QUERY_ATTRIBUTES:
        attributes.pop(name, None)
    attributes["http.route"] = route
    return attributes


def set_http_status(server: trace.Span, status: int) -> None:
    """The answer's status on a server span, as the ASGI instrumentation sets it: the status code
    attribute, and status ERROR (with ``error.type``) for 5xx; a 4xx leaves a server span UNSET."""
    from opentelemetry.instrumentation.asgi import set_status_code

    set_status_code(server, status, None, http_conventions())  # type: ignore[no-untyped-call]
