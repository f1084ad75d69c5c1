"""Tracing is configured by the standard OTEL_* variables alone: off when they are unset, refused at
start when they ask for what this build cannot do; the batch span's sampler follows its links."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, Decision
from opentelemetry.trace import Link, SpanContext, TraceFlags

from jotc_api import tracing


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, False),
    ],
)
def test_tracing_is_on_only_when_the_otel_variables_ask(env: dict[str, str], on: bool) -> None:
    assert tracing.wanted(env) is on
    try:
        assert (tracing.configure("jotc-api", env) is not None) is on
        assert (tracing.tracer is not None) is on
    finally:
        tracing.shutdown()
    assert tracing.tracer is None
    assert tracing.provider is None


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"}, "PROTOCOL"),
    ],
)
def test_what_this_build_cannot_export_is_refused_naming_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(tracing.TracingError, match=named):
        tracing.check(env)
    tracing.check({})  # off: nothing to check


def test_the_exporters_are_the_ones_named() -> None:
    exporters = tracing.exporters_from({"OTEL_TRACES_EXPORTER": "console,otlp"})
    assert [type(each).__name__ for each in exporters] == ["ConsoleSpanExporter", "OTLPSpanExporter"]
    for each in exporters:
        each.shutdown()


def test_the_service_name_defaults_to_the_commands_and_otel_service_name_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    processor = BatchSpanProcessor(ConsoleSpanExporter())
    try:
        tracing.configure("jotc-retention", {}, processor=processor)
        assert tracing.provider is not None
        assert tracing.provider.resource.attributes["service.name"] == "jotc-retention"
        monkeypatch.setenv("OTEL_SERVICE_NAME", "jotc-eu")
        tracing.configure("jotc-retention", {}, processor=BatchSpanProcessor(ConsoleSpanExporter()))
        assert tracing.provider is not None
        assert tracing.provider.resource.attributes["service.name"] == "jotc-eu"
    finally:
        tracing.shutdown()


def test_a_span_linking_to_a_sampled_span_is_sampled_whatever_the_ratio() -> None:
    sampler = tracing.LinkedSampler(ALWAYS_OFF)
    sampled = SpanContext(1, 2, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    unsampled = SpanContext(3, 4, is_remote=False)
    assert sampler.should_sample(None, 5, "batch", links=[Link(unsampled), Link(sampled)]).decision == (
        Decision.RECORD_AND_SAMPLE
    )
    assert sampler.should_sample(None, 5, "batch", links=[Link(unsampled)]).decision == Decision.DROP
    assert sampler.should_sample(None, 5, "batch").decision == Decision.DROP
    assert "AlwaysOff" in sampler.get_description()


def test_off_a_span_site_costs_a_shared_no_op() -> None:
    assert tracing.tracer is None
    assert tracing.span("parse") is tracing.NO_SPAN


def test_jotc_api_refuses_an_unusable_exporter_before_binding(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from jotc_api import server

    started: list[object] = []
    monkeypatch.setattr(server, "run", started.append)
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/jotc")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "jaeger")
    with pytest.raises(SystemExit) as exited:
        server.main()
    assert exited.value.code == 2
    assert started == []
    assert capsys.readouterr().err.strip() == (
        "jotc-api: OTEL_TRACES_EXPORTER must be otlp, console or none, got 'jaeger'"
    )


def test_an_unsampled_request_gets_no_child_spans_and_its_context_comes_from_its_headers() -> None:
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    tracer = tracing.configure("jotc-api", {}, processor=SimpleSpanProcessor(exporter))
    assert tracer is not None
    try:
        traceparent = b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-00"  # flags 00: not sampled
        unsampled = tracing.incoming([(b"host", b"x"), (b"traceparent", traceparent)])
        assert tracing.incoming([(b"host", b"x")]) is None
        with tracer.start_as_current_span("POST /jumps", unsampled):
            assert tracing.span("parse") is tracing.NO_SPAN
        with tracing.span("a root"):  # no current span: a root, sampled as the sampler says
            pass
        assert [span.name for span in exporter.get_finished_spans()] == ["a root"]
    finally:
        tracing.shutdown()
