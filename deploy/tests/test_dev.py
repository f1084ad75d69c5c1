"""scripts/dev end to end: the stack without Docker comes up, answers, and leaves nothing behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import psycopg
from conftest import ROOT

SERVER = os.environ.get("DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def fresh_database() -> Iterator[str]:
    name = f"jotc_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(SERVER, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield SERVER.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(SERVER, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_for(process: subprocess.Popen[bytes], url: str, failure: str, timeout: float = 120) -> None:
    """Poll url until it answers 200; fail early if scripts/dev exits."""
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, failure
        time.sleep(0.2)


def test_scripts_dev_runs_the_stack_and_ctrl_c_stops_everything(tmp_path: object) -> None:
    api_port, locust_port = free_port(), free_port()
    with fresh_database() as database_url:
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "PORT": str(api_port),
            "LOCUST_WEB_PORT": str(locust_port),
            "JOTC_WORKERS": "2",
        }
        process = subprocess.Popen(
            [str(ROOT / "scripts/dev")],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        pgid = process.pid
        try:
            base = f"http://127.0.0.1:{api_port}"
            wait_for(process, f"{base}/readyz", "scripts/dev did not become ready")
            created = httpx.post(f"{base}/jumps", json={"clouds": [0, 0, 1, 0, 0, 1, 0], "user": "dev"})
            assert created.status_code == 201
            record = httpx.get(f"{base}/jumps/{created.json()['id']}").json()
            assert (record["jumps"], record["clouds"], record["user"]) == (4, [0, 0, 1, 0, 0, 1, 0], "dev")
            wait_for(process, f"http://127.0.0.1:{locust_port}/", "Locust's UI did not come up")
        finally:
            os.killpg(pgid, signal.SIGINT)  # what Ctrl-C in a terminal does
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(pgid, signal.SIGKILL)
                raise
        deadline = time.monotonic() + 10
        while group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not group_alive(pgid), "scripts/dev left processes behind"
        for port in (api_port, locust_port):
            with socket.socket() as probe:
                assert probe.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open"
