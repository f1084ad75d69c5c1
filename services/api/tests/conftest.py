"""Fixtures: a freshly migrated database, the real server (jotc-api: Granian, 2 workers) on a free
port, an HTTP client, and a TCP proxy that can cut the API off from PostgreSQL."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from litestar.testing import TestClient
from sqlalchemy.engine import URL, make_url

from jotc_api.app import create_app
from jotc_api.settings import load_settings

DEFAULT_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
BIN = Path(sys.executable).parent
SIBLING_MIGRATE = Path(__file__).resolve().parents[2] / "db-migrations" / ".venv" / "bin" / "jotc-migrate"


def migrate_command() -> str:
    """The schema's owner, jotc-migrate from services/db-migrations: the tests build the schema
    exactly as production does. JOTC_MIGRATE names it (scripts/test sets it); otherwise the
    sibling checkout's environment is used."""
    command = os.environ.get("JOTC_MIGRATE") or str(SIBLING_MIGRATE)
    if not Path(command).exists():
        pytest.exit(
            f"jotc-migrate not found at {command}: run `uv sync` in services/db-migrations, "
            "or set JOTC_MIGRATE to its path",
            returncode=2,
        )
    return command


ADMIN_TOKEN = "test-admin-token"


def server_url() -> URL:
    """The PostgreSQL server scripts/test provisioned (DATABASE_URL), or the local default."""
    return make_url(os.environ.get("DATABASE_URL") or DEFAULT_SERVER_URL)


def libpq(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def fresh_database(*, migrate: bool = True) -> Iterator[str]:
    server = server_url()
    name = f"jotc_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(libpq(server), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = libpq(server.set(database=name))
    try:
        if migrate:
            result = subprocess.run(
                [migrate_command(), "upgrade"],
                env={**os.environ, "DATABASE_URL": url},
                capture_output=True,
                text=True,
                check=False,
                timeout=120,
            )
            assert result.returncode == 0, result.stderr
        yield url
    finally:
        with psycopg.connect(libpq(server), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class ApiServer:
    """A running jotc-api process; output goes to a log file the test can read."""

    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


def start_api(database_url: str, tmp: Path, *, port: int | None = None, **env: str) -> ApiServer:
    port = port or free_port()
    log_path = tmp / f"api-{port}.log"
    full_env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "PORT": str(port),
        "JOTC_HOST": "127.0.0.1",
        "JOTC_WORKERS": "2",
        "JOTC_ADMIN_TOKEN": ADMIN_TOKEN,
        "JOTC_MAX_CLOUDS": "5000",
        "JOTC_MAX_BODY_BYTES": "65536",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp / f"metrics-{port}"),
        "LOG_FORMAT": "json",
        "JOTC_ACCESS_LOG": "true",
        "JOTC_DRAIN_SECONDS": "0",  # stop at once; test_drain.py sets a delay where the drain is under test
        "REDIS_URL": os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL,
        **env,
    }
    with log_path.open("wb") as log_file:
        process = subprocess.Popen([str(BIN / "jotc-api")], env=full_env, stdout=log_file, stderr=subprocess.STDOUT)
    server = ApiServer(process, f"http://127.0.0.1:{port}", log_path, full_env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"jotc-api exited with {process.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.base_url}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.stop()
    raise AssertionError(f"jotc-api did not start within 60 s:\n{server.log()}")


@pytest.fixture(scope="session")
def tmp_root() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="jotc-api-tests-") as directory:
        yield Path(directory)


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url


@pytest.fixture(scope="session")
def api(database_url: str, tmp_root: Path) -> Iterator[ApiServer]:
    server = start_api(database_url, tmp_root)
    yield server
    server.stop()


@pytest.fixture
def client(api: ApiServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.base_url, timeout=30) as http:
        yield http


def in_process(database_url: str, **env: str) -> Any:
    """The application create_app() builds, in this process, through Litestar's test client."""
    settings = load_settings(
        {"DATABASE_URL": database_url, "REDIS_URL": os.environ.get("REDIS_URL", DEFAULT_REDIS_URL), **env}
    )
    return TestClient(app=create_app(settings, configure_logs=False))


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection


class CuttableProxy:
    """A TCP proxy to PostgreSQL that a test can cut (existing connections reset, new ones
    refused) and restore: the database becoming unreachable, as the API sees it."""

    def __init__(self, host: str, port: int, delay: float = 0.0) -> None:
        self.target = (host, port)
        self.port = free_port()
        self.delay = delay
        self._open = threading.Event()
        self._open.set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _listen(self) -> socket.socket:
        listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        listener.settimeout(0.1)
        return listener

    def _serve(self) -> None:
        while not self._stop.is_set():
            if not self._open.is_set():
                time.sleep(0.05)
                continue
            if self._listener is None:
                self._listener = self._listen()
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets.update({client, upstream})
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                if self.delay:
                    time.sleep(self.delay)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self._open.clear()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    sock.close()
                except OSError:
                    pass
            self._sockets.clear()

    def restore(self) -> None:
        self._open.set()

    def close(self) -> None:
        self.cut()
        self._stop.set()
        self._thread.join(timeout=5)


@contextmanager
def proxied(database_url: str, delay: float = 0.0) -> Iterator[tuple[CuttableProxy, str]]:
    url = make_url(database_url)
    proxy = CuttableProxy(url.host or "127.0.0.1", url.port or 5432, delay)
    try:
        yield proxy, libpq(url.set(host="127.0.0.1", port=proxy.port))
    finally:
        proxy.close()


class RedisServer:
    """A private redis-server on a free port that a test may stop and start again."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is needed for this test (Debian: apt-get install redis-server)")
        self.binary = binary
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()
