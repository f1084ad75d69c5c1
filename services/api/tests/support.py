"""What the API's tests share that is not a fixture: the admin token, the schema owner's command,
fresh databases, the real server (jotc-api: Granian) on a free port, the application in process,
and a TCP proxy that can cut the API off from PostgreSQL. Generic provisioning (ports, waiting,
databases, private Redis servers) is scripts/lib/jotc_provision.py, shared by every suite."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jotc_provision
import psycopg
import pytest
from jotc_provision import DEFAULT_DATABASE_URL, DEFAULT_REDIS_URL, free_port
from litestar.testing import TestClient
from litestar.types import ASGIApp, Receive, Scope, Send

from jotc_api.app import create_app
from jotc_api.settings import load_settings

ADMIN_TOKEN = "test-admin-token-of-at-least-32-characters"  # pragma: allowlist secret
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# What the tests' API runs with, in process or as a server, unless a test says otherwise.
TEST_SETTINGS = {"JOTC_ADMIN_TOKEN": ADMIN_TOKEN, "JOTC_MAX_CLOUDS": "5000", "JOTC_MAX_BODY_BYTES": "65536"}
# JOTC_TEST_POOLER=transaction (scripts/test's second pass of the integration tier): every database
# the tests use is reached through a PgBouncer in transaction mode (one per test process, started
# on first use), and every API the tests start runs with JOTC_DB_POOLER=transaction. Migrations and
# CREATE DATABASE go to PostgreSQL directly, as in production.
POOLED = os.environ.get("JOTC_TEST_POOLER", "") == "transaction"
POOLER_SETTINGS = {"JOTC_DB_POOLER": "transaction"} if POOLED else {}
POOLER_SERVER_CONNECTIONS = 4  # per database: PostgreSQL never sees more of the tests' API than this
_pooler: jotc_provision.PgBouncer | None = None
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


def server_url() -> str:
    """The PostgreSQL server scripts/test provisioned (DATABASE_URL), or the local default."""
    return os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL


def redis_url() -> str:
    return os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL


def pooler() -> jotc_provision.PgBouncer:
    """This test process's PgBouncer (transaction mode) before server_url(), started on first use
    and stopped when the process exits."""
    global _pooler
    if _pooler is None:
        import atexit
        import tempfile

        directory = Path(tempfile.mkdtemp(prefix="jotc-pgbouncer-"))
        started = jotc_provision.PgBouncer(directory, server_url(), pool_size=POOLER_SERVER_CONNECTIONS)
        started.start()
        atexit.register(lambda: (started.stop(), __import__("shutil").rmtree(directory, ignore_errors=True)))
        _pooler = started
    return _pooler


def reached(url: str) -> str:
    """url as the tests' API reaches it: through the pooler when POOLED, else as it is."""
    return pooler().url(url) if POOLED else url


@contextmanager
def fresh_database(*, migrate: bool = True) -> Iterator[str]:
    """A new database (at the schema's head unless migrate=False), dropped afterwards; its URL as
    the API reaches it (reached())."""
    with jotc_provision.fresh_database(server_url(), migrate_with=migrate_command() if migrate else None) as url:
        yield reached(url)


@dataclass
class ApiServer:
    """A running jotc-api process; its output goes to a log file the test can read."""

    process: Any  # subprocess.Popen[bytes]
    base_url: str
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        return jotc_provision.stop_process(self.process, timeout)


def start_api(database_url: str, tmp: Path, *, port: int | None = None, **env: str) -> ApiServer:
    """jotc-api (Granian, 2 workers unless env says otherwise) on a free port, once /healthz answers
    and every worker has started."""
    port = port or free_port()
    full_env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "PORT": str(port),
        "JOTC_HOST": "127.0.0.1",
        "JOTC_WORKERS": "2",
        **TEST_SETTINGS,
        "PROMETHEUS_MULTIPROC_DIR": str(tmp / f"metrics-{port}"),
        "LOG_FORMAT": "json",
        "JOTC_ACCESS_LOG": "true",
        "JOTC_DRAIN_SECONDS": "0",  # stop at once; test_drain.py sets a delay where the drain is under test
        "REDIS_URL": redis_url(),
        **POOLER_SETTINGS,
        **env,
    }
    base_url = f"http://127.0.0.1:{port}"
    try:
        started = jotc_provision.start_server(
            [str(BIN / "jotc-api")], env=full_env, log_path=tmp / f"api-{port}.log", ready_url=f"{base_url}/healthz"
        )
    except jotc_provision.ProvisionError as error:
        raise AssertionError(f"jotc-api did not start: {error}") from None
    server = ApiServer(started.process, base_url, tmp / f"api-{port}.log", full_env)
    # /healthz answers once one worker is up; wait for the others too: a worker still starting when
    # a test stops the server has been seen to hold the shutdown up for the whole drain delay.
    workers = int(full_env["JOTC_WORKERS"])
    try:
        jotc_provision.wait_until(
            lambda: server.log().count("Started worker-") >= workers,
            timeout=60,
            what=f"all {workers} workers of {base_url} started",
            interval=0.05,
        )
    except TimeoutError as error:
        server.stop()
        raise AssertionError(f"{error}:\n{server.log()}") from None
    return server


def with_peer(app: ASGIApp, host: str) -> ASGIApp:
    """app as a server would call it for a client at host (Litestar's test client says "testclient")."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = {**scope, "client": (host, 50000)}  # type: ignore[assignment]
        await app(scope, receive, send)

    return wrapped


def in_process(
    database_url: str, *, peer: str | None = None, clock: Callable[[], float] | None = None, **env: str
) -> Any:
    """The application create_app() builds, in this process, through Litestar's test client (an
    httpx.Client): settings from env, defaults otherwise (TEST_SETTINGS are what start_api()
    uses); `peer` is the client address the application sees; `clock` replaces the wall clock of
    rate limiting."""
    settings = load_settings({"DATABASE_URL": database_url, "REDIS_URL": redis_url(), **POOLER_SETTINGS, **env})
    app = create_app(settings, configure_logs=False, **({"clock": clock} if clock else {}))
    return TestClient(app=with_peer(app, peer) if peer else app)


def mid_window(period: int = 3600) -> Callable[[], float]:
    """A clock stopped in the middle of the current fixed window: a counting test never straddles
    a window's edge (tests/unit/test_ratelimit.py covers the edges)."""
    now = (time.time() // period) * period + period / 2
    return lambda: now


def fake_client() -> str:
    """A client no other test (or run) uses, passed through the trusted proxy header: an address
    in a /64 of its own, since IPv6 clients are counted by their /64."""
    return f"2001:db8:{uuid.uuid4().hex[:4]}:{uuid.uuid4().hex[:4]}::1"


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
            if not self._open.wait(timeout=0.05):
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
                    time.sleep(self.delay)  # the behaviour under test: a slow network to PostgreSQL
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
    """database_url reached through a CuttableProxy: (the proxy, the URL through it)."""
    parts = urllib.parse.urlsplit(database_url)
    proxy = CuttableProxy(parts.hostname or "127.0.0.1", parts.port or 5432, delay)
    try:
        netloc = parts.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{proxy.port}"
        yield proxy, urllib.parse.urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))
    finally:
        proxy.close()


def plant(url: str, user: str, rows: int, age: str = "1 hour") -> None:
    """``rows`` small valid requests for one user, recorded ``age`` ago and earlier, with their statistics."""
    with psycopg.connect(url, autocommit=True) as db:
        db.execute(
            "INSERT INTO jump_requests (id, user_name, n, max_jump, clouds, jumps, created_at) "
            "SELECT gen_random_uuid(), %s, 7, 2, '\\x00'::bytea, 3, "
            "now() - %s::interval - i * interval '1 millisecond' FROM generate_series(1, %s) AS i",
            (user, age, rows),
        )
        db.execute(
            "INSERT INTO user_stats AS s (user_name, requests, last_request_at) "
            "SELECT user_name, count(*), max(created_at) FROM jump_requests WHERE user_name = %s GROUP BY 1 "
            "ON CONFLICT (user_name) DO UPDATE SET requests = excluded.requests, "
            "last_request_at = excluded.last_request_at",
            (user,),
        )
        db.execute("VACUUM ANALYZE jump_requests")
        db.execute("CHECKPOINT")  # what a test then measures does not pay for flushing the plant


def agreement(url: str) -> dict[str, Any]:
    """Whether statistics agree with the rows, per user and in total."""
    with psycopg.connect(url) as db:
        mismatched = db.execute(
            "SELECT count(*) FROM (SELECT user_name, count(*) AS n FROM jump_requests GROUP BY 1) r "
            "FULL JOIN user_stats s USING (user_name) WHERE r.n IS DISTINCT FROM s.requests"
        ).fetchone()
        counted = db.execute(
            "SELECT (SELECT count(*) FROM jump_requests), (SELECT count(*) FROM user_stats)"
        ).fetchone()
        totals = db.execute("SELECT sum(requests), sum(users) FROM stats_totals").fetchone()
    assert mismatched is not None
    assert counted is not None
    assert totals is not None
    return {"mismatched": mismatched[0], "counted": tuple(counted), "totals": tuple(totals)}


def worker_pids(main_pid: int) -> set[int]:
    out = subprocess.run(["pgrep", "-P", str(main_pid)], capture_output=True, text=True, check=False).stdout
    return {int(pid) for pid in out.split()}


def gone(pid: int) -> bool:
    """Has the process exited (its sockets closed), whether or not its parent has reaped it yet?"""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")
