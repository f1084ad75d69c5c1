"""Graceful drain through the real server: /readyz 503 and Connection: close while the listener
stays open, then Granian's shutdown; and two instances behind HAProxy (no retries) restarted in
turn under steady load without losing a request."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
from jotc_provision import DEFAULT_REDIS_URL, free_port, wait_until
from litestar.testing import TestClient
from support import ApiServer, fresh_database, start_api

from jotc_api.app import create_app
from jotc_api.drain import DrainFlag
from jotc_api.settings import DEFAULT, load_settings

# HAProxy below takes a server out after 2 failed checks 0.5 s apart: the drain leaves it several
# times that, for checks a loaded machine delays.
DRAIN_SECONDS = 6
# A shutdown held by something (a connection, a worker) lasts JOTC_SHUTDOWN_TIMEOUT after the drain;
# an unhindered one, a fraction of a second.
SHUTDOWN_TIMEOUT = DEFAULT["shutdown_timeout"]
BODY = {"clouds": [0, 0, 1, 0, 0, 1, 0], "user": "drain"}


def exchange(
    sock: socket.socket, method: str, path: str, body: dict[str, object] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request and its answer on a connection the caller keeps (no reconnecting)."""
    payload = json.dumps(body).encode() if body is not None else b""
    head = f"{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {len(payload)}\r\n"
    if body is not None:
        head += "Content-Type: application/json\r\n"
    sock.sendall(head.encode() + b"\r\n" + payload)
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


def closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(DRAIN_SECONDS)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False


def port_of(server: ApiServer) -> int:
    return int(server.base_url.rsplit(":", 1)[1])


def threads_of(pid: int) -> int:
    """How many threads process pid runs (its main process starts one when a SIGTERM begins the
    drain timer: the sign that the signal was handled)."""
    return len(os.listdir(f"/proc/{pid}/task"))


def posts_answered(server: ApiServer) -> int:
    """POST /jumps answers in the server's access log (written in batches every 0.2 s)."""
    return server.log().count('"method":"POST","path":"/jumps"')


def recorded(database_url: str, ids: list[str]) -> int:
    with psycopg.connect(database_url, autocommit=True) as db:
        row = db.execute("SELECT count(*) FROM jump_requests WHERE id = ANY(%s::uuid[])", (ids,)).fetchone()
    return int(row[0]) if row else 0


def test_while_draining_readyz_is_503_healthz_200_and_every_answer_closes_the_connection(
    database_url: str,
) -> None:
    flag = DrainFlag(bytearray(1))
    settings = load_settings(
        {"DATABASE_URL": database_url, "REDIS_URL": os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)}
    )
    with TestClient(app=create_app(settings, configure_logs=False, drain=flag)) as client:
        assert client.get("/readyz").status_code == 200
        assert "connection" not in client.post("/jumps", json=BODY).headers
        flag.begin()
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["status"] == "draining"
        assert ready.headers["connection"] == "close"
        assert "\njotc_ready 0.0\n" in client.get("/metrics").text, "a draining pod says it is not ready"
        assert client.get("/healthz").status_code == 200
        for answer in (
            client.post("/jumps", json=BODY),
            client.get("/nowhere"),
            client.post("/jumps", content=b"{", headers={"content-type": "application/json"}),
        ):
            assert answer.status_code in {201, 404, 400}
            assert answer.headers["connection"] == "close"


def test_sigterm_drains_then_stops_and_keep_alive_clients_are_told(tmp_root: Path) -> None:
    with fresh_database() as database_url:
        server = start_api(database_url, tmp_root, JOTC_DRAIN_SECONDS=str(DRAIN_SECONDS))
        try:
            port = port_of(server)
            kept = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
            for sock in kept:  # kept-alive connections, idle when the signal comes
                status, headers, _ = exchange(sock, "POST", "/jumps", BODY)
                assert status == 201
                assert "connection" not in headers

            server.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            with httpx.Client(base_url=server.base_url, timeout=10) as probe:  # the signal is handled
                wait_until(
                    lambda: probe.get("/readyz").status_code == 503,
                    timeout=DRAIN_SECONDS / 2,  # a signal not handled until the drain ends never gets there
                    what="the drain starting (/readyz 503) after SIGTERM",
                    interval=0.01,
                )
            readiness: Counter[tuple[int, str]] = Counter()
            acknowledged: list[str] = []
            # /readyz on fresh connections (they reach both workers) across the drain's first half;
            # one kept connection after another sends a POST in that half, the last at its end, so
            # that each is answered with seconds of the drain to spare.
            while kept or time.monotonic() - signalled < DRAIN_SECONDS / 2:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as probe:
                    status, headers, body = exchange(probe, "GET", "/readyz")
                    readiness[(status, json.loads(body)["status"])] += 1
                    assert headers.get("connection") == "close"
                with socket.create_connection(("127.0.0.1", port), timeout=10) as probe:
                    assert exchange(probe, "GET", "/healthz")[0] == 200
                if kept and time.monotonic() - signalled >= (5 - len(kept)) * DRAIN_SECONDS / 8:
                    sock = kept.pop()
                    status, headers, body = exchange(sock, "POST", "/jumps", BODY)
                    assert status == 201, f"POST on a kept connection during the drain: {status} {body!r}"
                    assert headers.get("connection") == "close"
                    acknowledged.append(json.loads(body)["id"])
                    assert closed_by_server(sock), "a kept connection stayed open after its Connection: close answer"
                    sock.close()
                time.sleep(0.1)  # the pace of the probes across the drain window, not a wait for anything
            assert set(readiness) == {(503, "draining")}, (
                f"/readyz during the drain was not always 503: {dict(readiness)}"
            )

            code = server.process.wait(timeout=DRAIN_SECONDS + SHUTDOWN_TIMEOUT + 30)
            stopped = time.monotonic() - signalled
            assert code == 0, f"the server exited with {code} after the drain:\n{server.log()}"
            # Never before the drain's end; long after it only when something held the shutdown.
            assert DRAIN_SECONDS <= stopped < DRAIN_SECONDS + SHUTDOWN_TIMEOUT - 10, (
                f"the server exited {stopped:.2f} s after SIGTERM, the drain being {DRAIN_SECONDS} s"
            )
            with pytest.raises(ConnectionRefusedError):  # and now the listener is closed
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            assert "recorder drained" in server.log(), f"the recorder did not say it drained:\n{server.log()}"
            assert recorded(database_url, acknowledged) == len(acknowledged), "an acknowledged request has no row"
            print(f"\ndrain: /readyz {dict(readiness)}; exit {stopped:.2f} s after SIGTERM (delay {DRAIN_SECONDS} s)")
        finally:  # a no-op once it has stopped
            server.stop(timeout=5)


def test_sigusr1_starts_the_drain_and_a_second_sigterm_cuts_it_short(tmp_root: Path) -> None:
    with fresh_database() as database_url:
        server = start_api(database_url, tmp_root, JOTC_DRAIN_SECONDS="60")
        try:
            with httpx.Client(base_url=server.base_url, timeout=5) as client:
                assert client.get("/readyz").status_code == 200
                server.process.send_signal(signal.SIGUSR1)
                wait_until(
                    lambda: client.get("/readyz").status_code == 503,
                    timeout=5,
                    what="SIGUSR1 starting the drain (/readyz 503)",
                )
                assert client.get("/healthz").status_code == 200
                answer = client.post("/jumps", json=BODY)
                assert answer.status_code == 201
                assert answer.headers["connection"] == "close"
                threads = threads_of(server.process.pid)
                server.process.send_signal(signal.SIGTERM)  # the drain goes on: 60 s from SIGUSR1
                # Handled once the main process has started its drain timer (one more thread), or
                # wrongly, by exiting: either way the wait ends, and the assertion says which.
                wait_until(
                    lambda: server.process.poll() is not None or threads_of(server.process.pid) > threads,
                    timeout=10,
                    what="the main process handling SIGTERM (its drain timer thread starting)",
                )
                assert server.process.poll() is None, f"SIGTERM during the drain stopped the server:\n{server.log()}"
                assert client.post("/jumps", json=BODY).status_code == 201
            server.process.send_signal(signal.SIGTERM)
            try:
                code = server.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                raise AssertionError(
                    f"the second SIGTERM did not stop the server within 15 s:\n{server.log()}"
                ) from None
            assert code == 0, f"the server exited with {code} after the second SIGTERM:\n{server.log()}"
        finally:  # a no-op once it has stopped
            server.stop(timeout=5)


# --- two instances behind HAProxy -----------------------------------------------------------------


def haproxy_binary() -> str:
    """HAProxy from Debian, installed here when missing and we are root with apt-get."""
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "haproxy"]):
            subprocess.run(command, env=environment, capture_output=True, check=False, timeout=600)
        found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
    if found is None:
        reason = "haproxy is not installed and cannot be installed here (needs root and apt-get)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return found


@dataclass
class Balancer:
    """HAProxy in front of two API ports: no retries, no redispatch, /readyz checked every 0.5 s."""

    url: str
    socket_path: Path

    def states(self) -> dict[str, str]:
        with socket.socket(socket.AF_UNIX) as control:
            control.connect(str(self.socket_path))
            control.sendall(b"show stat\n")
            text = b"".join(iter(lambda: control.recv(65536), b"")).decode()
        lines = text.splitlines()
        columns = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(columns, line.split(","), strict=False)) for line in lines[1:] if line]
        return {row["svname"]: row["status"] for row in rows if row["pxname"] == "api"}

    def wait_until(self, server: str, status: str, timeout: float = 20) -> None:
        found: list[str | None] = [None]

        def reached() -> bool:
            found[0] = self.states().get(server)
            return found[0] == status

        try:
            wait_until(reached, timeout=timeout, what=f"HAProxy marking {server} {status}", interval=0.05)
        except TimeoutError as error:
            raise AssertionError(f"HAProxy says {server} is {found[0]}, not {status}: {error}") from None


@contextmanager
def haproxy(tmp: Path, ports: dict[str, int]) -> Iterator[Balancer]:
    binary = haproxy_binary()
    front = free_port()
    control = tmp / f"haproxy-{front}.sock"
    servers = "\n".join(f"    server {name} 127.0.0.1:{port} check" for name, port in ports.items())
    config = tmp / f"haproxy-{front}.cfg"
    config.write_text(
        f"""global
    stats socket {control} mode 600 level admin
    maxconn 2000
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    retries 0
    no option redispatch
frontend api_in
    bind 127.0.0.1:{front}
    default_backend api
backend api
    balance roundrobin
    option httpchk
    http-check send meth GET uri /readyz
    default-server inter 500ms fall 2 rise 2
{servers}
"""
    )
    log_path = tmp / f"haproxy-{front}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen([binary, "-db", "-f", str(config)], stdout=log_file, stderr=subprocess.STDOUT)
    try:

        def started() -> bool:
            assert process.poll() is None, f"haproxy exited with {process.returncode}:\n{log_path.read_text()}"
            return control.exists()

        wait_until(started, timeout=10, what="haproxy starting (its stats socket appearing)")
        yield Balancer(f"http://127.0.0.1:{front}", control)
    finally:
        process.terminate()
        process.wait(timeout=10)


@dataclass
class Outcome:
    sent: float
    status: int | None
    id: str | None
    error: str | None


async def steady_load(url: str, rate: float, stop: asyncio.Event) -> list[Outcome]:
    """POST /jumps at a fixed rate through the balancer until ``stop``; every answer kept."""
    outcomes: list[Outcome] = []
    started = time.monotonic()

    async def one(client: httpx.AsyncClient) -> None:
        sent = time.monotonic() - started
        try:
            answer = await client.post("/jumps", json=BODY)
            rid = answer.json().get("id") if answer.status_code == 201 else None
            outcomes.append(Outcome(sent, answer.status_code, rid, None if rid or answer.status_code != 201 else "?"))
        except httpx.HTTPError as exc:
            outcomes.append(Outcome(sent, None, None, f"{type(exc).__name__}: {exc}"))

    limits = httpx.Limits(max_connections=64, max_keepalive_connections=16)
    async with httpx.AsyncClient(base_url=url, timeout=20, limits=limits) as client:
        tasks: set[asyncio.Task[None]] = set()
        n = 0
        while not stop.is_set():
            task = asyncio.create_task(one(client))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
            await asyncio.sleep(max(0.0, started + n / rate - time.monotonic()))  # the pace of the load
        await asyncio.gather(*tasks)
    return outcomes


def test_instances_restarted_in_turn_behind_a_balancer_that_does_not_retry_lose_nothing(tmp_root: Path) -> None:
    rate = 50.0  # a request every 20 ms reaches every moment of a restart; more only loads the machine
    with fresh_database() as database_url:
        env = {"JOTC_DRAIN_SECONDS": str(DRAIN_SECONDS)}
        instances = {name: start_api(database_url, tmp_root, **env) for name in ("a", "b")}
        ports = {name: port_of(server) for name, server in instances.items()}
        exits: list[tuple[str, int, float]] = []
        try:
            with haproxy(tmp_root, ports) as balancer:
                for name in ports:
                    balancer.wait_until(name, "UP")

                def both_serve_the_load(what: str) -> None:
                    wait_until(
                        lambda: all(posts_answered(server) >= 20 for server in instances.values()),
                        timeout=20,
                        what=f"{what}: 20 POST /jumps answered by each instance",
                        interval=0.05,
                    )

                def restart_in_turn(rounds: int) -> None:
                    both_serve_the_load("the load reaching both instances before the first restart")
                    for _ in range(rounds):
                        for name in ports:
                            signalled = time.monotonic()
                            instances[name].process.send_signal(signal.SIGTERM)  # as the kubelet does
                            code = instances[name].process.wait(timeout=DRAIN_SECONDS + SHUTDOWN_TIMEOUT + 30)
                            exits.append((name, code, time.monotonic() - signalled))
                            instances[name] = start_api(database_url, tmp_root, port=ports[name], **env)
                            balancer.wait_until(name, "UP")
                    both_serve_the_load("the load reaching both restarted instances")

                async def scenario() -> list[Outcome]:
                    stop = asyncio.Event()
                    load = asyncio.create_task(steady_load(balancer.url, rate, stop))
                    await asyncio.to_thread(restart_in_turn, 2)
                    stop.set()
                    return await load

                outcomes = asyncio.run(scenario())
        finally:
            for server in instances.values():
                server.stop()

        failed = [o for o in outcomes if o.status != 201 or o.error]
        ids = [o.id for o in outcomes if o.id]
        seconds = max(o.sent for o in outcomes)
        print(
            f"\nbalancer: {len(outcomes)} requests in {seconds:.1f} s ({len(outcomes) / seconds:.0f}/s), "
            f"{len(exits)} restarts (exit after SIGTERM: {', '.join(f'{t:.2f} s' for _, _, t in exits)}); "
            f"answers {dict(Counter(o.status for o in outcomes))}; {len(failed)} failed"
        )
        assert all(code == 0 for _, code, _ in exits), f"an instance exited non-zero after SIGTERM: {exits}"
        assert not failed, f"{len(failed)} of {len(outcomes)} requests failed through the balancer: {failed[:10]}"
        assert recorded(database_url, ids) == len(ids), "an acknowledged request has no row"
