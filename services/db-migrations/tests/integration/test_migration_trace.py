"""The real command's upgrade as a span, with the revisions before and after, through the OTLP/HTTP
exporter's settings path: the console exporter keeps the test free of a receiver (the API's system
test exercises OTLP/HTTP end to end)."""

from __future__ import annotations

import json

from support import Migrate

from jotc_migrations.cli import head_revision


def spans_in(stderr: str) -> list[dict[str, object]]:
    """The console exporter's spans (indented JSON objects) among the command's lines."""
    spans, lines = [], stderr.splitlines()
    for start, line in enumerate(lines):
        if line == "{":
            end = lines.index("}", start)
            spans.append(json.loads("\n".join(lines[start : end + 1])))
    return spans


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
