"""jotc-migrate's run as a span when the OTEL_* variables ask for traces, nothing otherwise, by the
API's rules case for case (services/api/tests/unit/test_tracing_setup.py): an exporter or OTLP
protocol this build lacks stops the command at once (exit 2, one line naming the variable); the
span is exported before the command exits, with the command, its exit code and, for an upgrade, the
revisions before and after (tests/integration/test_migration_trace.py: an otlp,console list)."""

from __future__ import annotations

import pytest
from support import spans_in

from jotc_migrations import __version__
from jotc_migrations.cli import main, trace_exporters, tracing_wanted
from jotc_migrations.errors import EXIT_OK, EXIT_UNAVAILABLE, MigrateError


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
def test_traces_only_when_the_otel_variables_ask(env: dict[str, str], on: bool) -> None:
    assert tracing_wanted(env) is on
    assert bool(trace_exporters(env)) is on


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json",
            },
            "PROTOCOL",
        ),
    ],
)
def test_what_this_build_cannot_export_is_refused_naming_the_variable(
    env: dict[str, str], named: str
) -> None:
    with pytest.raises(MigrateError, match=named) as refused:
        trace_exporters(env)
    assert refused.value.exit_code == EXIT_UNAVAILABLE
    assert trace_exporters({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}) == [], "off: nothing to check"
    # Only the OTLP exporter speaks a protocol: the console's alone runs whatever it says.
    assert trace_exporters({**env, "OTEL_TRACES_EXPORTER": "console"}) == ["console"]


def test_the_exporters_are_the_ones_named() -> None:
    assert trace_exporters({"OTEL_TRACES_EXPORTER": " Console , otlp"}) == ["console", "otlp"]
    assert trace_exporters({"OTEL_TRACES_EXPORTER": "none,console"}) == ["console"]
    assert trace_exporters({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}) == ["otlp"]


def test_an_unusable_exporter_stops_the_command_before_it_runs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "jaeger")
    assert main(["head"]) == EXIT_UNAVAILABLE
    out, err = capsys.readouterr()
    assert out == "", "the command did not run"
    assert err.strip() == (
        "jotc-migrate: OTEL_TRACES_EXPORTER must be otlp, console or none, got 'jaeger'"
    )


def test_a_run_is_one_span_exported_before_exit(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    assert main(["head"]) == EXIT_OK
    (span,) = spans_in(capsys.readouterr().err)
    assert span["name"] == "jotc-migrate"
    assert span["attributes"] == {"jotc.migrate.command": "head", "process.exit.code": 0}
    assert span["resource"]["attributes"]["service.name"] == "jotc-migrate"  # type: ignore[index]
    assert span["resource"]["attributes"]["service.version"] == __version__  # type: ignore[index]


def test_a_failed_run_is_a_failed_span(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "migrations-eu")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert main(["upgrade"]) == EXIT_UNAVAILABLE
    (span,) = spans_in(capsys.readouterr().err)
    assert span["status"] == {"status_code": "ERROR"}
    assert span["resource"]["attributes"]["service.name"] == "migrations-eu"  # type: ignore[index]


def test_without_otel_variables_nothing_is_printed_but_the_commands_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for part in ("TRACES_EXPORTER", "EXPORTER_OTLP_ENDPOINT", "EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(f"OTEL_{part}", raising=False)
    assert main(["head"]) == EXIT_OK
    assert spans_in(capsys.readouterr().err) == []
