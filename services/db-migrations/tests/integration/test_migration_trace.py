"""The real command's upgrade as a span, with the revisions before and after, through the OTLP/HTTP
exporter's settings path: the console exporter keeps the test free of a receiver (the API's system
test exercises OTLP/HTTP end to end)."""

from __future__ import annotations

from support import Migrate, spans_in

from jotc_migrations.cli import head_revision


def test_an_upgrade_is_a_span_naming_the_revisions(migrate: Migrate) -> None:
    result = migrate.ok("upgrade", env={"OTEL_TRACES_EXPORTER": "console"})
    (span,) = spans_in(result.stderr)
    assert span["attributes"] == {
        "jotc.migrate.command": "upgrade",
        "db.migration.from": "empty",
        "db.migration.to": head_revision(),
        "process.exit.code": 0,
    }
    assert "upgraded from empty" in result.stderr
