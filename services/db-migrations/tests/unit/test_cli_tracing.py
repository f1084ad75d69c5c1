"""jotc-migrate's run as a span when the OTEL_* variables ask for traces (the API's rule), nothing
otherwise: exported before the command exits, with the command, its exit code and, for an upgrade,
the revisions before and after (tests/integration/test_migration_trace.py)."""

from __future__ import annotations

import pytest
from support import spans_in

from jotc_migrations.cli import main, tracing_wanted
from jotc_migrations.errors import EXIT_OK, EXIT_UNAVAILABLE


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"}, False),
    ],
)
def test_traces_only_when_the_otel_variables_ask(env: dict[str, str], on: bool) -> None:
    assert tracing_wanted(env) is on


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
