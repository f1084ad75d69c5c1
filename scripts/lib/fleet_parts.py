"""The parts of scripts/fleet that are processes or talk to them: API instances, HAProxy before them,
the Locust swarm, the sampler of PostgreSQL's server connections, and the rate-limit probe. Ports,
waiting, PostgreSQL, PgBouncer and Redis come from jotc_provision."""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jotc_provision
import psycopg
from common import SERVICES
from fleet_report import LATE_SYNC_SECONDS, ProbeResult, Request, Sample
from jotc_provision import free_port, wait_until

API = SERVICES / "api/.venv/bin/jotc-api"
LOADTEST = SERVICES / "loadtest/.venv/bin/jotc-loadtest"
LOCUSTFILE = Path(__file__).resolve().with_name("fleet_locustfile.py")

# HAProxy checks /readyz every 0.5 s and takes a server out after 2 failures: 1 s. The default drain
# (scripts/fleet --drain-seconds) leaves three times that, for checks a busy machine delays.
DRAIN_SECONDS = 3.0
SHUTDOWN_TIMEOUT = 25.0  # the API's default: in-flight requests and the recorder after the drain
# PostgreSQL connections per instance (one worker each), its readiness connection aside: small, so
# that the instances together ask PgBouncer for more than its budget and it multiplexes them.
DB_POOL_SIZE = 2
# A Locust user's think time between tasks, seconds: with an answer's few milliseconds, about one
# request a second (60 a minute), far below the rate limit of a client address.
THINK = (0.5, 1.5)
LOCUST_WORKERS = 2
# The rate limiter's sync interval (services/api/src/jotc_api/ratelimit.py, SYNC_SECONDS) and the
# lateness allowed to a sync on a busy machine (see probe()).
SYNC_SECONDS = 0.1
REDIS_TIMEOUT_SECONDS = 0.25  # services/api/src/jotc_api/redis_link.py: a sync gives up after twice this
PROBE_RATE = 40.0  # the probe's requests a second
PROBE_SHARE = 2.5  # it sends this many times the limit (below the instances' count: see probe())
PROBE_TRIES = 3  # probes sent, each from a new address, while Redis fails a sync during one
SYNC_FAILURES = 'jotc_redis_failures_total{operation="rate-limit sync"}'
BODY = json.dumps({"clouds": [0, 0, 1, 0, 0, 1, 0], "user": "fleet-probe"}).encode()


class FleetError(Exception):
    """A phase could not be carried out (an instance that does not come back, a failed migration)."""


def haproxy_binary() -> str:
    return shutil.which("haproxy") or "/usr/sbin/haproxy"


def pgbouncer_binary() -> str:
    return shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


def scrubbed_environment() -> dict[str, str]:
    """This process's environment without the settings the fleet gives its processes itself (an
    operator's JOTC_*, REDIS_*, DATABASE_URL or PORT would otherwise change what is measured)."""
    own = ("JOTC_", "REDIS_", "LOCUST_", "DATABASE_URL", "PORT", "PROMETHEUS_MULTIPROC_DIR", "LOG_")
    return {key: value for key, value in os.environ.items() if not key.startswith(own)}


# --- API instances ----------------------------------------------------------------------------------


@dataclass
class Instance:
    """One jotc-api (one Granian worker) on its own port; started again on the same port."""

    name: str
    port: int
    env: dict[str, str]
    logs: Path
    drain: float
    server: jotc_provision.Server | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start it and wait until /readyz answers 200 (PostgreSQL through PgBouncer, the schema)."""
        self.starts += 1
        log = self.logs / f"api-{self.name}-{self.starts}.log"
        self.server = jotc_provision.start_server(
            [str(API)], env=self.env, log_path=log, ready_url=f"{self.url}/readyz", timeout=90
        )

    def terminate(self) -> tuple[int, float]:
        """SIGTERM, as a kubelet sends it, and wait for the exit: its status and how long it took."""
        assert self.server is not None
        process = self.server.process
        began = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=self.drain + SHUTDOWN_TIMEOUT + 30)
        except subprocess.TimeoutExpired:
            tail = self.server.log()[-3000:]
            raise FleetError(f"instance {self.name} still running long after SIGTERM:\n{tail}") from None
        self.server = None
        return code, time.monotonic() - began

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(timeout=self.drain + SHUTDOWN_TIMEOUT + 5)
            self.server = None


def start_instances(count: int, settings: dict[str, str], logs: Path, drain: float = DRAIN_SECONDS) -> list[Instance]:
    """`count` instances named a, b, c, …, started side by side; ready when this returns."""
    logs.mkdir(parents=True, exist_ok=True)
    instances = []
    for number in range(count):
        name = chr(ord("a") + number) if number < 26 else f"i{number}"
        port = free_port()
        env = {
            **scrubbed_environment(),
            **settings,
            "PORT": str(port),
            "JOTC_HOST": "127.0.0.1",
            "JOTC_WORKERS": "1",
            "JOTC_DB_POOL_SIZE": str(DB_POOL_SIZE),
            "JOTC_DRAIN_SECONDS": f"{drain:g}",
            # Everything here runs on 127.0.0.1: HAProxy, and the swarm and probe before it, which
            # stand in for an edge that forwards each user's address. Elsewhere, only the balancers.
            "JOTC_TRUSTED_PROXIES": "127.0.0.1",
            "PROMETHEUS_MULTIPROC_DIR": str(logs / f"metrics-{name}"),
            "LOG_FORMAT": "json",
        }
        instances.append(Instance(name, port, env, logs, drain))
    try:
        with ThreadPoolExecutor(max_workers=count) as pool:
            for started in [pool.submit(instance.start) for instance in instances]:
                started.result()
    except BaseException:
        stop_instances(instances)
        raise
    return instances


def stop_instances(instances: list[Instance]) -> None:
    """SIGTERM to all at once, then wait for each (they drain side by side)."""
    for instance in instances:
        if instance.server is not None and instance.server.process.poll() is None:
            instance.server.process.send_signal(signal.SIGTERM)
    for instance in instances:
        instance.stop()


# --- HAProxy ----------------------------------------------------------------------------------------


class Balancer:
    """HAProxy before the instances: round robin; /readyz checked every 0.5 s (2 failures take a
    server out, 2 successes bring it back); X-Forwarded-For added; no retries and no redispatch, so
    that what the clients see is what the instances did (the drain, not HAProxy, keeps a restart
    clean). Its stats socket says each server's state."""

    def __init__(self, directory: Path, servers: dict[str, int]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory.resolve()  # HAProxy runs in it: its config's path must not be relative
        self.servers = servers
        self.port = free_port()
        self.control = directory / "haproxy.sock"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> str:
        lines = "\n".join(f"    server {name} 127.0.0.1:{port} check" for name, port in self.servers.items())
        # Relative to HAProxy's working directory (the balancer's own): a socket's path is bound to
        # 97 bytes, which a deep scratch directory (pytest's, under the run's TMPDIR) exceeds.
        return f"""global
    stats socket unix@{self.control.name} mode 600 level admin
    maxconn 4000
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    retries 0
    no option redispatch
    option forwardfor
frontend api_in
    bind 127.0.0.1:{self.port}
    default_backend api
backend api
    balance roundrobin
    option httpchk
    http-check send meth GET uri /readyz
    default-server inter 500ms fall 2 rise 2
{lines}
"""

    def __enter__(self) -> Balancer:
        config = self.directory / "haproxy.cfg"
        config.write_text(self.config())
        log = self.directory / "haproxy.log"
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [haproxy_binary(), "-db", "-f", str(config)], cwd=self.directory, stdout=out, stderr=subprocess.STDOUT
            )
        process = self.process

        def started() -> bool:
            if process.poll() is not None:
                raise jotc_provision.ProvisionError(f"haproxy exited with {process.returncode}:\n{log.read_text()}")
            return self.control.exists() and jotc_provision.port_open("127.0.0.1", self.port)

        wait_until(started, timeout=15, what="haproxy listening")
        return self

    def __exit__(self, *_: object) -> None:
        if self.process is not None:
            jotc_provision.stop_process(self.process, timeout=10)
            self.process = None

    def states(self) -> dict[str, str]:
        directory = os.open(self.directory, os.O_RDONLY)
        try:
            with socket.socket(socket.AF_UNIX) as control:
                control.settimeout(5)
                # Through the directory's descriptor: the full path may be longer than a socket's.
                control.connect(f"/proc/self/fd/{directory}/{self.control.name}")
                control.sendall(b"show stat\n")
                text = b"".join(iter(lambda: control.recv(65536), b"")).decode()
        finally:
            os.close(directory)
        lines = text.splitlines()
        columns = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(columns, line.split(","), strict=False)) for line in lines[1:] if line]
        return {
            row["svname"]: row["status"] for row in rows if row["pxname"] == "api" and row["svname"] in self.servers
        }

    def wait_until(self, server: str, status: str, timeout: float = 30) -> None:
        try:
            wait_until(lambda: self.states().get(server) == status, timeout=timeout, what=f"HAProxy: {server} {status}")
        except TimeoutError as error:
            raise FleetError(f"{error} (HAProxy says {self.states()})") from None

    def wait_all(self, status: str, timeout: float = 30) -> None:
        try:
            wait_until(
                lambda: set(self.states().values()) == {status}, timeout=timeout, what=f"HAProxy: every server {status}"
            )
        except TimeoutError as error:
            raise FleetError(f"{error} (HAProxy says {self.states()})") from None


# --- the Locust swarm -------------------------------------------------------------------------------


class Swarm:
    """jotc-loadtest headless: a master and LOCUST_WORKERS workers on this machine, the fleet's
    locustfile (every request written down under ``records``), gates that never fail the run (the
    fleet judges it), a run time that ends it even if the fleet never stops it."""

    def __init__(self, directory: Path, target: str, users: int, run_time: int = 1800) -> None:
        self.directory = directory
        self.records = directory / "records"
        self.records.mkdir(parents=True)
        port = free_port()
        common = {
            **scrubbed_environment(),
            "LOCUST_LOCUSTFILE": str(LOCUSTFILE),
            "PYTHONDONTWRITEBYTECODE": "1",  # Locust imports the locustfile from scripts/lib: no __pycache__ there
            "JOTC_TARGET": target,
            "JOTC_FLEET_RECORDS": str(self.records),
            "JOTC_LT_WAIT_MIN": f"{THINK[0]:g}",
            "JOTC_LT_WAIT_MAX": f"{THINK[1]:g}",
            "JOTC_SLO_MAX_FAILURE_RATIO": "1",
            "JOTC_SLO_P95_MS": "1e9",
            "JOTC_SLO_P99_MS": "1e9",
            "JOTC_REPORT_DIR": str(directory / "reports"),
        }
        self.master_env = {
            **common,
            "LOCUST_ROLE": "headless-master",
            "LOCUST_EXPECT_WORKERS": str(LOCUST_WORKERS),
            "LOCUST_MASTER_BIND_HOST": "127.0.0.1",
            "LOCUST_MASTER_BIND_PORT": str(port),
            "LOCUST_USERS": str(users),
            "LOCUST_SPAWN_RATE": str(users),
            "LOCUST_RUN_TIME": f"{run_time}s",
        }
        self.worker_env = {
            **common,
            "LOCUST_ROLE": "worker",
            "LOCUST_MASTER_NODE_HOST": "127.0.0.1",
            "LOCUST_MASTER_NODE_PORT": str(port),
        }
        self.master: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []

    def spawn(self, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            return subprocess.Popen([str(LOADTEST)], env=env, cwd=self.directory, stdout=out, stderr=subprocess.STDOUT)

    def __enter__(self) -> Swarm:
        self.master = self.spawn(self.master_env, self.directory / "master.log")
        for number in range(LOCUST_WORKERS):
            self.workers.append(self.spawn(self.worker_env, self.directory / f"worker-{number}.log"))
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def log(self) -> str:
        return (self.directory / "master.log").read_text(errors="replace")

    def wait_spawned(self, timeout: float) -> None:
        def spawned() -> bool:
            for process in [self.master, *self.workers]:
                if process is not None and process.poll() is not None:
                    raise FleetError(f"a Locust process exited with {process.returncode}:\n{self.log()[-3000:]}")
            return "All users spawned" in self.log()

        wait_until(spawned, timeout=timeout, what="Locust spawning every user", interval=0.1)

    def stop(self) -> None:
        """The master told to stop (SIGTERM: it tells its workers, writes its reports and exits)."""
        if self.master is not None:
            jotc_provision.stop_process(self.master, timeout=30)
            self.master = None
        for worker in self.workers:
            jotc_provision.stop_process(worker, timeout=15)
        self.workers = []


# --- PostgreSQL server connections ------------------------------------------------------------------


class ConnectionSampler:
    """Every 0.1 s: the fleet database's server connections in pg_stat_activity, read on a direct
    connection of its own (not counted), jotc-migrate's apart from the rest (PgBouncer's); and
    PgBouncer's clients for that database, active and waiting for a server connection (SHOW POOLS
    on its admin console, which its `auth_type = any` opens to any user)."""

    QUERY = (
        "SELECT count(*) FILTER (WHERE application_name IS DISTINCT FROM 'jotc-migrate'), "
        "count(*) FILTER (WHERE application_name = 'jotc-migrate') FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
    )

    def __init__(self, direct_url: str, pooler: jotc_provision.PgBouncer, interval: float = 0.1) -> None:
        self.direct_url = direct_url
        self.database = urllib.parse.unquote(urllib.parse.urlsplit(direct_url).path.lstrip("/"))
        self.console_url = jotc_provision.with_database(pooler.url(direct_url), "pgbouncer")
        self.interval = interval
        self.samples: list[Sample] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def pooler_clients(self, console: psycopg.Connection[Any]) -> tuple[int, int] | None:
        cursor = console.cursor()
        cursor.execute("SHOW POOLS")
        names = [column.name for column in cursor.description or []]
        for row in cursor.fetchall():
            pool = dict(zip(names, row, strict=True))
            if pool["database"] == self.database:
                return int(pool["cl_active"]) + int(pool["cl_waiting"]), int(pool["cl_waiting"])
        return None

    def sample(self) -> None:
        server: psycopg.Connection[Any] | None = None
        console: psycopg.Connection[Any] | None = None
        while not self.stopping.wait(self.interval):
            try:
                if server is None or server.closed:
                    server = psycopg.connect(self.direct_url, autocommit=True, connect_timeout=2)
                counts = server.execute(self.QUERY).fetchone()
            except psycopg.Error:
                server = None
                continue
            clients: tuple[int, int] | None = None
            try:  # PgBouncer may be restarting: the sample has no clients then
                if console is None or console.closed:
                    console = psycopg.connect(
                        self.console_url, autocommit=True, connect_timeout=2, cursor_factory=psycopg.ClientCursor
                    )
                clients = self.pooler_clients(console)
            except psycopg.Error:
                console = None
            if counts is not None:
                self.samples.append(
                    Sample(
                        time.time(),
                        int(counts[0]),
                        int(counts[1]),
                        clients[0] if clients else None,
                        clients[1] if clients else None,
                    )
                )
        for connection in (server, console):
            if connection is not None:
                connection.close()

    def __enter__(self) -> ConnectionSampler:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)

    def within(self, start: float, end: float) -> list[Sample]:
        return [sample for sample in list(self.samples) if start <= sample.at <= end]


# --- HTTP straight from here: the probe, and keyed POSTs to one instance ----------------------------


async def post(port: int, address: str, headers: dict[str, str] | None = None) -> Request:
    """One POST /jumps to 127.0.0.1:port on a connection of its own, as client `address`
    (X-Forwarded-For); the answer as the swarm's records hold one."""
    began, clock = time.time(), time.monotonic()
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    head = (
        f"POST /jumps HTTP/1.1\r\nHost: fleet\r\nContent-Type: application/json\r\nContent-Length: {len(BODY)}\r\n"
        f"X-Forwarded-For: {address}\r\nConnection: close\r\n{extra}\r\n"
    )
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
    except (OSError, TimeoutError):
        return Request(began, (time.monotonic() - clock) * 1000, 0, "POST", "")
    try:
        writer.write(head.encode() + BODY)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 30)
        fields: dict[str, str] = {}
        while (line := await asyncio.wait_for(reader.readline(), 30)) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            fields[name.strip().lower()] = value.strip()
        body = await asyncio.wait_for(reader.read(), 30)
    except (OSError, TimeoutError):
        return Request(began, (time.monotonic() - clock) * 1000, 0, "POST", "")
    finally:
        writer.close()
    parts = status_line.split()
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    record_id = fields.get("location", "").rsplit("/", 1)[-1] if status == 201 else ""
    media = fields.get("content-type", "")
    origin = ("api" if media.startswith("application/problem+json") else "balancer") if status >= 500 else ""
    return Request(began, (time.monotonic() - clock) * 1000, status, "POST", record_id, origin, problem_kind(body))


def problem_kind(body: bytes) -> str:
    """The last part of a problem+json answer's type ("overloaded"), or "" for any other body."""
    try:
        kind = json.loads(body).get("type", "")
    except (ValueError, AttributeError):
        return ""
    return kind.rsplit("/", 1)[-1] if isinstance(kind, str) else ""


def keyed_post_until_201(instance: Instance, timeout: float) -> str:
    """POST /jumps with an Idempotency-Key (which needs Redis's master), straight to one instance,
    every 0.2 s until one is answered 201; its record id. Each as another client address (192.0.2.x:
    TEST-NET-1), so the attempts cannot reach a rate limit."""
    deadline = time.monotonic() + timeout
    while True:
        address = f"192.0.2.{random.randint(1, 254)}"  # noqa: S311 - a made-up client, not a secret
        answer = asyncio.run(post(instance.port, address, {"Idempotency-Key": f"fleet-{uuid.uuid4()}"}))
        if answer.status == 201:
            return answer.record_id
        if time.monotonic() >= deadline:
            raise FleetError(f"instance {instance.name} never wrote through Redis's new master (last: {answer.answer})")
        time.sleep(0.2)  # the pace of the attempts


def sync_failures(instances: list[Instance]) -> int:
    """Rate-limit syncs that Redis failed or timed out, summed over the instances' /metrics."""
    failed = 0.0
    for instance in instances:
        with urllib.request.urlopen(f"{instance.url}/metrics", timeout=10) as answer:  # noqa: S310 - 127.0.0.1
            for line in answer.read().decode().splitlines():
                if line.startswith(SYNC_FAILURES):
                    failed += float(line.rsplit(" ", 1)[1])
    return int(failed)


def probe(port: int, limit: int, instances: list[Instance], late_syncs: float = LATE_SYNC_SECONDS) -> ProbeResult:
    """One client address (203.0.113.x: TEST-NET-3) sending PROBE_SHARE times the limit POST /jumps
    through HAProxy at PROBE_RATE a second, within one minute's window (if the current window has
    too little left, it starts at the next one).

    Alone, each instance would admit the whole limit: round robin, up to ``instances`` times the limit
    in all, which for three instances or more is every request sent here. Sharing their counts
    through Redis, they admit the limit and an overshoot that ratelimit.py documents: what the client
    sends to the other instances within one sync interval (SYNC_SECONDS), PROBE_RATE x 0.1 s. The
    tolerance allows that plus syncs late by ``late_syncs`` on a busy machine (LATE_SYNC_SECONDS:
    PROBE_RATE x 0.5 s in all).

    A sync that Redis fails or times out leaves an instance counting alone until the next one (the
    design for a Redis outage), so a probe during which one failed measures that, not sharing: it is
    sent again from a new address, up to PROBE_TRIES times, and the result says how many failed."""
    first = random.randint(1, 254 - PROBE_TRIES)  # noqa: S311 - made-up clients, one per probe
    for tries in range(1, PROBE_TRIES + 1):
        before = sync_failures(instances)
        answers = probe_once(port, limit, f"203.0.113.{first + tries}")
        time.sleep(SYNC_SECONDS + 2 * REDIS_TIMEOUT_SECONDS)  # the last sync's answer, or its timeout
        failed = sync_failures(instances) - before
        if not failed:
            break
    return ProbeResult(
        limit=limit,
        instances=len(instances),
        period="minute",
        rate=PROBE_RATE,
        answers=Counter(answer.answer for answer in answers),
        tolerance=PROBE_RATE * (SYNC_SECONDS + late_syncs) / limit,
        record_ids=tuple(answer.record_id for answer in answers if answer.record_id),
        tries=tries,
        failed_syncs=failed,
    )


def probe_once(port: int, limit: int, address: str) -> list[Request]:
    """One probe's answers, as client ``address`` (see probe())."""
    count = math.ceil(limit * PROBE_SHARE)
    duration = count / PROBE_RATE
    left = 60 - time.time() % 60
    if left < duration + 5:
        time.sleep(left + 0.5)  # the next window's start: the probe must fit in one

    async def send() -> list[Request]:
        began = time.monotonic()
        tasks = []
        for number in range(count):
            tasks.append(asyncio.create_task(post(port, address)))
            await asyncio.sleep(max(0.0, began + (number + 1) / PROBE_RATE - time.monotonic()))  # the pace
        return list(await asyncio.gather(*tasks))

    answers = asyncio.run(send())
    windows = {int(answer.start // 60) for answer in answers}
    if len(windows) != 1:
        raise FleetError(f"the probe straddled two rate-limit windows ({sorted(windows)}); run it again")
    return answers
