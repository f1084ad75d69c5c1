"""What the migration tests share that is not a fixture: running jotc-migrate, the test-only
revisions, and the PostgreSQL server to make databases on. Generic provisioning (ports, waiting,
fresh databases) is scripts/lib/jotc_provision.py, shared by every suite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psycopg
from jotc_provision import DEFAULT_DATABASE_URL, free_port
from sqlalchemy.engine import make_url

Connection = psycopg.Connection[tuple[object, ...]]

# This service's own build of the command, from the environment the tests run in.
JOTC_MIGRATE = str(Path(sys.executable).with_name("jotc-migrate"))
# Test-only Alembic revisions, one directory per scenario (tests/revisions/README.md).
REVISIONS = Path(__file__).parent / "revisions"


def server_url() -> str:
    """The server scripts/test provisioned (DATABASE_URL), or the local default."""
    return os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL


def unreachable_url() -> str:
    """The server's URL with a port nothing listens on."""
    url = make_url(server_url()).set(host="127.0.0.1", port=free_port())
    return url.render_as_string(hide_password=False)


def extra(*scenarios: str, **env: str) -> dict[str, str]:
    """The environment of a build with test-only revisions past head (tests/revisions/): one
    scenario, or several that chain (expand, then contract_after_expand)."""
    paths = os.pathsep.join(str(REVISIONS / scenario) for scenario in scenarios)
    return {"JOTC_MIGRATE_EXTRA_VERSIONS": paths, **env}


def revision(db: Connection) -> list[str]:
    """What alembic_version says: [] on an empty or downgraded database."""
    return [str(row[0]) for row in db.execute("SELECT version_num FROM alembic_version")]


@dataclass(frozen=True)
class Migrate:
    """jotc-migrate against one database."""

    database_url: str

    def __call__(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [JOTC_MIGRATE, *args],
            env={**os.environ, "DATABASE_URL": self.database_url, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def ok(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run it and fail, saying which command and why, unless it exits 0."""
        result = self(*args, env=env, timeout=timeout)
        assert result.returncode == 0, (
            f"jotc-migrate {' '.join(args) or '(no arguments)'} exited {result.returncode}, "
            f"expected 0: {result.stderr.strip()}"
        )
        return result

    def popen(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [JOTC_MIGRATE, *args],
            env={**os.environ, "DATABASE_URL": self.database_url, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


def spans_in(stderr: str) -> list[dict[str, object]]:
    """The console exporter's spans (indented JSON objects) among the command's lines."""
    spans, lines = [], stderr.splitlines()
    for start, line in enumerate(lines):
        if line == "{":
            end = lines.index("}", start)
            spans.append(json.loads("\n".join(lines[start : end + 1])))
    return spans
