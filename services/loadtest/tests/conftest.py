"""Fixtures: a real JOTC API (from services/api, under Granian, on a fresh migrated database) for
the load test to hit. Helpers that are not fixtures are in support.py; provisioning is
jotc_provision (scripts/lib)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from jotc_provision import DEFAULT_DATABASE_URL, DEFAULT_REDIS_URL, free_port, fresh_database, start_server
from support import ADMIN_TOKEN, COVERAGE_VARIABLES, sibling_env

SERVICES = Path(__file__).resolve().parents[2]


def sibling(variable: str, path: Path) -> str:
    """A command from a sibling service: the variable names it (scripts/test sets both), else the
    sibling checkout's environment."""
    command = os.environ.get(variable) or str(path)
    if not Path(command).exists():
        pytest.exit(f"{command} not found: run `uv sync` in {path.parents[2]}, or set {variable}", returncode=2)
    return command


@pytest.fixture(scope="session")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The API on a free port, its own database (a unique name: safe under pytest-xdist)."""
    migrate = sibling("JOTC_MIGRATE", SERVICES / "db-migrations/.venv/bin/jotc-migrate")
    api = sibling("JOTC_API", SERVICES / "api/.venv/bin/jotc-api")
    tmp = tmp_path_factory.mktemp("api")
    with ExitStack() as stack:
        with pytest.MonkeyPatch.context() as patch:
            for variable in COVERAGE_VARIABLES:  # jotc-migrate runs with os.environ
                patch.delenv(variable, raising=False)
            server_url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
            database_url = stack.enter_context(fresh_database(server_url, migrate_with=migrate))
        port = free_port()
        env = {
            **sibling_env(os.environ),
            "DATABASE_URL": database_url,
            "PORT": str(port),
            "JOTC_HOST": "127.0.0.1",
            "JOTC_WORKERS": "2",
            "JOTC_ADMIN_TOKEN": ADMIN_TOKEN,
            "REDIS_URL": os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL,
            "PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics"),
        }
        base = f"http://127.0.0.1:{port}"
        server = start_server([api], env=env, log_path=tmp / "api.log", ready_url=f"{base}/readyz")
        stack.callback(server.stop)
        yield base
