"""Fixtures: a real JOTC API (from services/api, on a fresh migrated database) for the load test to
hit, and a way to run jotc-loadtest headless."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

SERVICES = Path(__file__).resolve().parents[2]
JOTC_LOADTEST = str(Path(sys.executable).with_name("jotc-loadtest"))
DEFAULT_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def sibling(variable: str, path: Path) -> str:
    """A command from a sibling service: the variable names it (scripts/test sets both), else the
    sibling checkout's environment."""
    command = os.environ.get(variable) or str(path)
    if not Path(command).exists():
        pytest.exit(f"{command} not found: run `uv sync` in {path.parents[2]}, or set {variable}", returncode=2)
    return command


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def psql_url(database: str) -> str:
    base = os.environ.get("DATABASE_URL") or DEFAULT_SERVER_URL
    return base.rsplit("/", 1)[0] + "/" + database


def admin_sql(statement: str) -> None:
    python = Path(sibling("JOTC_MIGRATE", SERVICES / "db-migrations/.venv/bin/jotc-migrate")).with_name("python")
    code = "import sys, psycopg; psycopg.connect(sys.argv[1], autocommit=True).execute(sys.argv[2])"
    subprocess.run([str(python), "-c", code, psql_url("postgres"), statement], check=True, timeout=60)


ADMIN_TOKEN = "loadtest-admin-token"


@pytest.fixture(scope="session")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    database = f"jotc_test_{uuid.uuid4().hex[:12]}"
    admin_sql(f'CREATE DATABASE "{database}"')
    url = psql_url(database)
    process = None
    try:
        migrate = sibling("JOTC_MIGRATE", SERVICES / "db-migrations/.venv/bin/jotc-migrate")
        subprocess.run([migrate, "upgrade"], env={**os.environ, "DATABASE_URL": url}, check=True, timeout=120)
        port = free_port()
        log = tmp_path_factory.mktemp("api") / "api.log"
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "PORT": str(port),
            "JOTC_HOST": "127.0.0.1",
            "JOTC_WORKERS": "2",
            "JOTC_ADMIN_TOKEN": ADMIN_TOKEN,
            "REDIS_URL": os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0",
            "PROMETHEUS_MULTIPROC_DIR": str(log.parent / "metrics"),
        }
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sibling("JOTC_API", SERVICES / "api/.venv/bin/jotc-api")],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/readyz", timeout=1) as response:  # noqa: S310 - loopback
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the API did not become ready"
            time.sleep(0.1)
        yield base
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
        admin_sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def run_loadtest(target: str, workdir: Path, seconds: int, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [JOTC_LOADTEST],
        env={
            **os.environ,
            "LOCUST_ROLE": "headless",
            "JOTC_TARGET": target,
            "LOCUST_USERS": "8",
            "LOCUST_SPAWN_RATE": "8",
            "LOCUST_RUN_TIME": f"{seconds}s",
            "JOTC_REPORT_DIR": str(workdir / "reports"),
            **env,
        },
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
    )
