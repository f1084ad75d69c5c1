"""Provisioning, written once: free ports, waiting on a condition, PostgreSQL and Redis (found, or
throwaway ones started from the local binaries), fresh databases, and starting a server and waiting
for it. scripts/test, scripts/dev, scripts/bench and every test suite use this module and nothing
else for these jobs.

The standard library only, so the scripts can run it with the machine's python3 before any
environment exists; creating and dropping databases needs psycopg, imported where that is done (every
environment that does it has psycopg).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

T = TypeVar("T")


class ProvisionError(Exception):
    """Something to run against could not be found or started; the message says what to do."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Does something accept TCP connections at host:port?"""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def wait_until(condition: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.02) -> T:
    """Poll condition() until it returns something true (a non-empty list, True, an object), and
    return that; raise TimeoutError naming `what` when `timeout` seconds pass first. The way to
    wait for something to happen: never a fixed sleep."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        time.sleep(interval)


def http_status(url: str, timeout: float = 2) -> int | None:
    """The status URL answers with, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - our own servers
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except (OSError, ValueError):
        return None


def wait_http(
    url: str, process: subprocess.Popen[Any] | None = None, *, timeout: float = 60, log: Path | None = None
) -> None:
    """Wait until URL answers 200. Fails at once if `process` (the server behind it) exits, with the
    end of its log when one is named."""

    def answered() -> bool:
        if process is not None and process.poll() is not None:
            tail = f":\n{tail_of(log)}" if log is not None else ""
            raise ProvisionError(f"the process behind {url} exited with {process.returncode}{tail}")
        return http_status(url) == 200

    try:
        wait_until(answered, timeout=timeout, what=f"{url} answering 200", interval=0.05)
    except TimeoutError as error:
        tail = f"\n{tail_of(log)}" if log is not None else ""
        raise ProvisionError(f"{error}{tail}") from None


def tail_of(log: Path | None, lines: int = 40) -> str:
    if log is None or not log.exists():
        return "(no log)"
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def stop_process(process: subprocess.Popen[Any], timeout: float = 30) -> int:
    """SIGTERM, then SIGKILL if it is still there after `timeout` seconds; its exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


@dataclass
class Server:
    """A process started by start_server(): its log, and stop()."""

    process: subprocess.Popen[bytes]
    log_path: Path | None = None  # None: its output goes where this process's goes
    env: dict[str, str] = field(default_factory=dict)

    def log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        return stop_process(self.process, timeout)


def spawn(command: list[str], *, env: Mapping[str, str], cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start command with its output where this process's goes."""
    return subprocess.Popen(command, env=dict(env), cwd=cwd)


def start_server(
    command: list[str],
    *,
    env: Mapping[str, str],
    log_path: Path,
    ready_url: str | None = None,
    timeout: float = 60,
    cwd: Path | None = None,
) -> Server:
    """Start command with its output in log_path and, given ready_url, wait until that answers 200;
    a server that exits or never answers is stopped and reported with its log."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as out:
        process = subprocess.Popen(command, env=dict(env), stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
    server = Server(process, log_path, dict(env))
    if ready_url is not None:
        try:
            wait_http(ready_url, process, timeout=timeout, log=log_path)
        except BaseException:
            server.stop(timeout=5)
            raise
    return server


# PostgreSQL URLs: libpq's form, postgresql://USER[:PASSWORD]@HOST:PORT/DATABASE.


def with_database(url: str, database: str) -> str:
    """url naming another database on the same server (user, password, host and options kept)."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + urllib.parse.quote(database)))


def shown(url: str) -> str:
    """url with its password replaced by ***, for logs and messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


# The PostgreSQL driver: psycopg where this Python has it (the tests' environments); otherwise the
# scripts, run by the machine's python3, borrow services/db-migrations' environment for each statement.
SQL_IN_ANOTHER_PYTHON = """
import json, sys, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as connection:
    cursor = connection.execute(sys.argv[2], json.loads(sys.argv[3]))
    print(json.dumps(cursor.fetchall() if cursor.description else []))
"""
PSYCOPG_PYTHON = Path(__file__).resolve().parents[2] / "services/db-migrations/.venv/bin/python"


def admin_sql(server_url: str, statement: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement outside a transaction (CREATE DATABASE must); the rows it returns."""
    try:
        import psycopg
    except ImportError:
        python = os.environ.get("JOTC_PSYCOPG_PYTHON") or str(PSYCOPG_PYTHON)
        if not Path(python).exists():
            raise ProvisionError(
                f"no PostgreSQL driver: {python} is missing; run uv sync in services/db-migrations"
            ) from None
        ran = subprocess.run(
            [python, "-c", SQL_IN_ANOTHER_PYTHON, server_url, statement, json.dumps(params)],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if ran.returncode != 0:
            said = ran.stderr.strip().splitlines()[-1:] or ["(nothing)"]
            raise ProvisionError(f"PostgreSQL at {shown(server_url)} refused `{statement}`: {said[0]}") from None
        return [tuple(row) for row in json.loads(ran.stdout)]
    with psycopg.connect(server_url, autocommit=True) as admin:
        cursor = admin.execute(statement, params)
        return [tuple(row) for row in cursor.fetchall()] if cursor.description else []


def create_database(server_url: str, name: str, *, exist_ok: bool = False) -> str:
    """Create database `name` on the server (kept if it exists and exist_ok); its URL."""
    exists = admin_sql(server_url, "SELECT 1 FROM pg_database WHERE datname = %s", (name,))
    if not exists or not exist_ok:
        admin_sql(server_url, f'CREATE DATABASE "{name}"')
    return with_database(server_url, name)


def drop_database(server_url: str, name: str) -> None:
    admin_sql(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def migrate(database_url: str, command: str, *, timeout: float = 120) -> None:
    """Bring database_url to the schema's head with jotc-migrate (services/db-migrations)."""
    result = subprocess.run(
        [command, "upgrade"],
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise ProvisionError(f"jotc-migrate upgrade failed ({result.returncode}):\n{result.stderr}")


@contextmanager
def fresh_database(server_url: str, *, prefix: str = "jotc_test", migrate_with: str | None = None) -> Iterator[str]:
    """A new database on the server, migrated to head with `migrate_with` when given (jotc-migrate's
    path); dropped afterwards, connections and all."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    url = create_database(server_url, name)
    try:
        if migrate_with is not None:
            migrate(url, migrate_with)
        yield url
    finally:
        drop_database(server_url, name)


# Throwaway servers, from the binaries of this machine.


def pg_binary(tool: str) -> str | None:
    found = shutil.which(tool)
    if found:
        return found

    def version(path: Path) -> int:
        return int(path.parts[-3]) if path.parts[-3].isdigit() else 0

    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{tool}"), key=version)
    return str(candidates[-1]) if candidates else None


def as_postgres() -> list[str]:
    """PostgreSQL refuses to run as root: as root, its commands run as the postgres user."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


@contextmanager
def throwaway_postgres(directory: Path) -> Iterator[str]:
    """A private PostgreSQL (trust auth, fsync off) on a free port, its data in directory; stopped
    and removed afterwards. Yields the URL of its postgres database."""
    initdb, pg_ctl = pg_binary("initdb"), pg_binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        raise ProvisionError(
            "no PostgreSQL: set DATABASE_URL, start a server on 127.0.0.1:5432, or install PostgreSQL's "
            "server binaries (Debian: apt-get install postgresql) so a throwaway one can be started"
        )
    data = directory / "postgres"
    data.mkdir(parents=True)
    run_as = as_postgres()
    if run_as:
        shutil.chown(data, "postgres")
    port = free_port()
    log = data / "server.log"
    initialised = subprocess.run(
        [*run_as, initdb, "-D", str(data / "db"), "-U", "postgres", "--auth=trust", "--no-sync"],
        capture_output=True,
        text=True,
        check=False,
    )
    if initialised.returncode != 0:
        raise ProvisionError(f"initdb failed:\n{initialised.stdout}{initialised.stderr}")
    options = f"-h 127.0.0.1 -p {port} -k {data} -c fsync=off -c max_connections=200"
    started = subprocess.run(
        [*run_as, pg_ctl, "-D", str(data / "db"), "-l", str(log), "-w", "-t", "60", "-o", options, "start"],
        capture_output=True,
        text=True,
        check=False,
    )
    if started.returncode != 0:
        raise ProvisionError(f"PostgreSQL did not start:\n{tail_of(log)}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*run_as, pg_ctl, "-D", str(data / "db"), "-m", "immediate", "-w", "stop"],
            capture_output=True,
            check=False,
        )


class RedisServer:
    """A private redis-server on a free port (no persistence) that a test may kill and start again."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ProvisionError(
                "no Redis: set REDIS_URL, start a server on 127.0.0.1:6379, or install redis-server "
                "(Debian: apt-get install redis-server) so a throwaway one can be started"
            )
        self.binary = binary
        self.port = port or free_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(
            [*command, "--dir", str(self.directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        process = self.process

        def listening() -> bool:
            if process.poll() is not None:
                raise ProvisionError(f"redis-server exited with {process.returncode} (port {self.port})")
            return port_open("127.0.0.1", self.port, timeout=0.2)

        wait_until(listening, timeout=10, what=f"redis-server on port {self.port}")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@contextmanager
def throwaway_redis(directory: Path) -> Iterator[str]:
    server = RedisServer(directory / "redis")
    server.start()
    try:
        yield server.url
    finally:
        server.kill()


class PgBouncer:
    """A private PgBouncer in transaction mode on a free port, in front of the PostgreSQL server of
    ``server_url``: every database of that server through it, at most ``pool_size`` server
    connections per database and user, as a production pooler is set up for JOTC
    (docs/deployment.md). The machine's pgbouncer (Debian 12's 1.18 has no protocol-level prepared
    statements; GitHub's Ubuntu runner installs 1.22). It may be stopped and started again on the
    same port (a restart under load)."""

    def __init__(
        self,
        directory: Path,
        server_url: str,
        *,
        pool_size: int = 8,
        port: int | None = None,
        entries: Mapping[str, tuple[str, int]] | None = None,
    ) -> None:
        binary = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None)
        if binary is None:
            raise ProvisionError("no PgBouncer: install it (Debian: apt-get install pgbouncer); scripts/test does")
        self.binary = binary
        self.server = urllib.parse.urlsplit(server_url)
        self.pool_size = pool_size
        self.entries = dict(entries or {})  # database entries of their own: name -> (database, pool size)
        self.port = port or free_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, database_url: str, entry: str | None = None) -> str:
        """database_url (a database of the server behind) as reached through this pooler, through
        its own ``entry`` when given (one of ``entries``)."""
        parts = urllib.parse.urlsplit(database_url)
        netloc = f"{parts.username or 'postgres'}@127.0.0.1:{self.port}"
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc, path=f"/{entry}" if entry else parts.path))

    def write_config(self) -> Path:
        server = self.server
        user = server.username or "postgres"
        password = f" password={urllib.parse.unquote(server.password)}" if server.password else ""
        config = self.directory / "pgbouncer.ini"
        address = f"host={server.hostname or '127.0.0.1'} port={server.port or 5432} user={user}{password}"
        own = "".join(
            f"{name} = {address} dbname={database} pool_size={size}\n"
            for name, (database, size) in self.entries.items()
        )
        config.write_text(
            "[databases]\n"
            f"{own}* = {address}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            "auth_type = any\npool_mode = transaction\n"
            f"default_pool_size = {self.pool_size}\nreserve_pool_size = 0\nmax_client_conn = 2000\n"
            "server_reset_query =\nserver_check_delay = 1\nserver_login_retry = 1\n"
            "ignore_startup_parameters = extra_float_digits\nlog_connections = 0\nlog_disconnections = 0\n"
        )
        config.chmod(0o644)
        return config

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o755)
        config = self.write_config()
        # PgBouncer refuses to run as root: as root, it drops to the postgres user (-u).
        run_as = ["-u", "postgres"] if os.geteuid() == 0 else []
        log = (self.directory / "pgbouncer.log").open("ab")
        with log:
            self.process = subprocess.Popen([self.binary, *run_as, str(config)], stdout=log, stderr=subprocess.STDOUT)
        process = self.process

        def listening() -> bool:
            if process.poll() is not None:
                raise ProvisionError(
                    f"pgbouncer exited with {process.returncode}:\n{tail_of(self.directory / 'pgbouncer.log')}"
                )
            return port_open("127.0.0.1", self.port, timeout=0.2)

        wait_until(listening, timeout=10, what=f"pgbouncer on port {self.port}")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, timeout=10)
            self.process = None


@contextmanager
def pgbouncer(directory: Path, server_url: str, *, pool_size: int = 8) -> Iterator[PgBouncer]:
    pooler = PgBouncer(directory, server_url, pool_size=pool_size)
    pooler.start()
    try:
        yield pooler
    finally:
        pooler.stop()


def local_default(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    return port_open(parts.hostname or "127.0.0.1", parts.port or 0)


@dataclass(frozen=True)
class Servers:
    """What to run against: a PostgreSQL server URL whose role may create databases, a Redis URL,
    and a line for each saying where it came from."""

    database_url: str
    redis_url: str
    said: tuple[str, ...]


@contextmanager
def servers(
    env: Mapping[str, str] | None = None, *, throwaway: bool = False, scratch: Path | None = None
) -> Iterator[Servers]:
    """PostgreSQL and Redis to run against: DATABASE_URL / REDIS_URL as given; else servers on the
    default local ports; else (always, with throwaway) private ones started for the block and
    stopped after it."""
    env = os.environ if env is None else env
    with ExitStack() as stack:

        def directory() -> Path:
            nonlocal scratch
            if scratch is None:
                scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="jotc-servers.")))
                scratch.chmod(0o755)  # a throwaway PostgreSQL runs as postgres and keeps its data inside
            return scratch

        def choose(name: str, variable: str, default: str, start: Callable[[Path], Any]) -> tuple[str, str]:
            if env.get(variable) and not throwaway:
                return env[variable], f"{name}: {variable} as given ({shown(env[variable])})"
            if not throwaway and local_default(default):
                return default, f"{name}: the local server, {default}"
            url = str(stack.enter_context(start(directory())))
            return url, f"{name}: a throwaway server, {url}"

        database_url, said_database = choose("PostgreSQL", "DATABASE_URL", DEFAULT_DATABASE_URL, throwaway_postgres)
        redis_url, said_redis = choose("Redis", "REDIS_URL", DEFAULT_REDIS_URL, throwaway_redis)
        said = [said_database, said_redis]
        yield Servers(database_url, redis_url, tuple(said))


def redis_call(port: int, *args: str, host: str = "127.0.0.1", timeout: float = 2) -> Any:
    """One command to the redis-server (or sentinel) at host:port, on a connection of its own, and
    its reply: str, int, None or a list of those. An error reply raises ProvisionError; an unreachable
    server raises OSError. The standard library's socket only, as the rest of this module."""
    request = b"".join([f"*{len(args)}\r\n".encode(), *(f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args)])
    with socket.create_connection((host, port), timeout=timeout) as connection:
        connection.sendall(request)
        with connection.makefile("rb") as reply:
            return _resp_reply(reply)


def _resp_reply(reply: Any) -> Any:
    line = reply.readline()
    if not line.endswith(b"\r\n"):
        raise OSError("the connection closed before the reply ended")
    kind, rest = line[:1], line[1:-2].decode()
    if kind == b"+":
        return rest
    if kind == b"-":
        raise ProvisionError(rest)
    if kind == b":":
        return int(rest)
    if kind == b"$":
        return None if rest == "-1" else reply.read(int(rest) + 2)[:-2].decode()
    if kind == b"*":
        return None if rest == "-1" else [_resp_reply(reply) for _ in range(int(rest))]
    raise OSError(f"not a RESP2 reply: {line!r}")


def _fields(pairs: list[str]) -> dict[str, str]:
    """A flat [name, value, name, value, …] reply (SENTINEL MASTER, SENTINEL REPLICAS) as a dict."""
    return dict(zip(pairs[0::2], pairs[1::2], strict=True))


@dataclass
class RedisNode:
    """One redis-server process of a RedisSentinelGroup: a data node or a sentinel, on its own port."""

    name: str
    port: int
    command: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, *extra: str) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen([*self.command, *extra], stdout=log, stderr=subprocess.STDOUT)
        process = self.process

        def listening() -> bool:
            if process.poll() is not None:
                raise ProvisionError(f"{self.name} exited with {process.returncode}:\n{tail_of(self.log_path)}")
            return port_open("127.0.0.1", self.port, timeout=0.2)

        wait_until(listening, timeout=10, what=f"{self.name} on port {self.port}")

    def kill(self) -> None:
        """SIGKILL: the process dies at once, as a machine that loses power (nothing written, no goodbye)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, timeout=10)
            self.process = None

    def info(self, section: str) -> dict[str, str]:
        """INFO <section> as a dict (role, master_link_status, master_repl_offset, …)."""
        text = str(redis_call(self.port, "INFO", section))
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


class RedisSentinelGroup:
    """A master, ``replicas`` replicas (1) and ``sentinels`` sentinels (3) watching them as
    ``service``, each a redis-server process of its own on a free 127.0.0.1 port, without
    persistence: what the API's REDIS_SENTINELS and REDIS_SENTINEL_SERVICE name (``sentinels_setting``,
    ``service``). A context manager: started on entry, every process stopped on exit.

    Failover is quick by default (``down_after_ms`` 1 s before a sentinel deems the master down;
    ``failover_timeout_ms`` 5 s, also the pause before a failed election is tried again, twice
    that); production runs 30 s and 3 minutes (docs/reliability.md says what that means).
    ``kill_master()`` SIGKILLs whichever node the sentinels name now, ``wait_for_master()`` waits
    for them to agree on a live one, ``restart()`` brings a killed node back as a replica."""

    def __init__(
        self,
        directory: Path,
        *,
        service: str = "mymaster",
        replicas: int = 1,
        sentinels: int = 3,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ProvisionError("no redis-server: install it (Debian: apt-get install redis-server)")
        self.directory = directory
        self.service = service
        self.quorum = sentinels // 2 + 1  # sentinels that must deem the master down; a majority elects
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.nodes: list[RedisNode] = []
        for i in range(1 + replicas):
            port = free_port()
            name = "redis-0 (first master)" if i == 0 else f"redis-{i}"
            # A directory each: a replica's full sync leaves a dump.rdb there, which a restarted node
            # would load at start.
            command = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
            command += ["--dir", str(directory / f"redis-{i}")]
            self.nodes.append(RedisNode(name, port, command, directory / f"redis-{i}.log"))
        self.sentinels: list[RedisNode] = []
        for i in range(sentinels):
            config = directory / f"sentinel-{i}.conf"  # written by start(), rewritten by the sentinel as it learns
            port = free_port()
            command = [binary, str(config), "--sentinel"]
            self.sentinels.append(RedisNode(f"sentinel-{i}", port, command, directory / f"sentinel-{i}.log"))

    @property
    def sentinels_setting(self) -> str:
        """REDIS_SENTINELS for an API that uses this group."""
        return ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels)

    def __enter__(self) -> RedisSentinelGroup:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self) -> None:
        """Every process started, and returned only once the replicas have synced and every sentinel
        knows the master, every replica and every other sentinel (sentinels find each other through
        the master within a few seconds; before that a failover could lack its votes)."""
        for i in range(len(self.nodes)):
            (self.directory / f"redis-{i}").mkdir(parents=True, exist_ok=True)
        try:
            master, *replicas = self.nodes
            master.start()
            for replica in replicas:
                replica.start("--replicaof", "127.0.0.1", str(master.port))
            for sentinel, config in zip(self.sentinels, self._sentinel_configs(master.port), strict=True):
                (self.directory / f"{sentinel.name}.conf").write_text(config)
                sentinel.start()
            wait_until(self._settled, timeout=60, what=f"the sentinels of {self.service} to know each other")
        except BaseException:
            self.stop()
            raise

    def _sentinel_configs(self, master_port: int) -> list[str]:
        return [
            f"port {sentinel.port}\nbind 127.0.0.1\ndir {self.directory}\n"
            f"sentinel monitor {self.service} 127.0.0.1 {master_port} {self.quorum}\n"
            f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}\n"
            f"sentinel failover-timeout {self.service} {self.failover_timeout_ms}\n"
            f"sentinel parallel-syncs {self.service} 1\n"
            for sentinel in self.sentinels
        ]

    def _settled(self) -> bool:
        replicas = len(self.nodes) - 1
        if any(node.info("replication").get("master_link_status") != "up" for node in self.nodes[1:]):
            return False
        for sentinel in self.sentinels:
            state = _fields(redis_call(sentinel.port, "SENTINEL", "MASTER", self.service))
            if int(state["num-other-sentinels"]) != len(self.sentinels) - 1 or int(state["num-slaves"]) != replicas:
                return False
        return True

    def stop(self) -> None:
        for node in [*self.sentinels, *self.nodes]:
            node.stop()

    def master_address(self) -> tuple[str, int] | None:
        """The master's address as a majority of the sentinels that answer give it, or None while
        they disagree (a failover under way) or too few answer."""
        answers: list[tuple[str, int]] = []
        for sentinel in self.sentinels:
            try:
                host, port = redis_call(sentinel.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
            except (OSError, ProvisionError, TypeError, ValueError):
                continue
            answers.append((host, int(port)))
        for address in set(answers):
            if answers.count(address) >= self.quorum:
                return address
        return None

    def master(self) -> RedisNode:
        """The node the sentinels name as master, if it is alive and says it is one; else ProvisionError."""
        address = self.master_address()
        for node in self.nodes:
            if address == ("127.0.0.1", node.port) and node.alive and node.info("replication")["role"] == "master":
                return node
        raise ProvisionError(f"no live master that the sentinels of {self.service} agree on (they say {address})")

    def kill_master(self) -> RedisNode:
        """SIGKILL the current master; the node killed (restart() brings it back)."""
        node = self.master()
        node.kill()
        return node

    def wait_for_master(self, *, other_than: RedisNode | None = None, timeout: float = 60) -> RedisNode:
        """The master once the sentinels agree on a live one (other than ``other_than``: the promotion
        after a failover)."""

        def found() -> RedisNode | None:
            try:
                node = self.master()
            except (OSError, ProvisionError):
                return None
            return node if node is not other_than else None

        return wait_until(found, timeout=timeout, what=f"a master of {self.service} promoted", interval=0.05)

    def restart(self, node: RedisNode) -> None:
        """Start a killed node again, as a replica of the current master (a node that came back as a
        master, empty, would be one until the sentinels turn it; it never holds the service)."""
        master = self.master()
        node.start("--replicaof", "127.0.0.1", str(master.port))

    def replicated(self) -> bool:
        """Has every live replica acknowledged everything the master has written so far?"""
        master = self.master()
        offset = int(master.info("replication")["master_repl_offset"])
        replicas = [node for node in self.nodes if node is not master and node.alive]
        return all(int(node.info("replication").get("slave_repl_offset", -1)) >= offset for node in replicas)
