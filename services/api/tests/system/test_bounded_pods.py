"""What no crowd can take from a pod, through the real server: its memory (300 of the largest bodies
at once against one worker), its upload slots (one address stalling every upload it can open), its
framing (Transfer-Encoding refused), its readiness (/readyz on a connection of its own while the
traffic pool is stuck), its Redis connections (a bounded pool), and its admin token (refused at
start-up when short)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from jotc_provision import RedisServer, free_port, wait_until
from support import ApiServer, start_api

from jotc_api.memory import DEFAULT_REQUEST_MEMORY, MIB, WORKER_BASELINE
from jotc_api.settings import longest_body

MAX_CLOUDS = 100_000
JOTC_API = str(Path(sys.executable).with_name("jotc-api"))


def port_of(server: ApiServer) -> int:
    return int(server.base_url.rsplit(":", 1)[1])


def workers_peak_rss(server: ApiServer) -> int:
    """The largest peak resident set (VmHWM) among the server's worker processes, in bytes."""
    pid = server.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    peaks = []
    for child in children:
        for line in Path(f"/proc/{child}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peaks.append(int(line.split()[1]) * 1024)
    assert peaks, f"no worker processes under {pid}"
    return max(peaks)


async def crowd(port: int, request: bytes, clients: int) -> Counter[str]:
    """Every client sends the whole request at once, then reads the answer to its end; the clients
    come from ten addresses (127.0.0.1 to 127.0.0.10), so no one client's share is what binds."""

    async def one(index: int) -> str:
        try:
            source = (f"127.0.0.{1 + index % 10}", 0)
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=source)
            writer.write(request)
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), 120)
            writer.close()
        except OSError as error:  # a reset or a broken pipe: the server cut the client off
            return type(error).__name__
        return answer[9:12].decode() or "no answer"

    return Counter(await asyncio.gather(*(one(index) for index in range(clients))))


def test_a_crowd_of_the_largest_bodies_cannot_push_a_worker_past_its_memory(database_url: str, tmp_path: Path) -> None:
    """One worker (a pod of one CPU) with the defaults: 300 clients each send the largest body the
    limit allows, 100,000 clouds spelled the longest ordinary way and padded to the limit. Every
    answer is 201 or 503 (never a reset or a 500), and the worker's peak memory stays inside its
    own footprint plus the request budget, well under the chart's 512Mi."""
    server = start_api(
        database_url,
        tmp_path,
        JOTC_WORKERS="1",
        JOTC_MAX_CLOUDS=str(MAX_CLOUDS),
        JOTC_MAX_BODY_BYTES="",  # the default, derived from JOTC_MAX_CLOUDS
        JOTC_ACCESS_LOG="false",
    )
    try:
        limit = longest_body(MAX_CLOUDS)
        body = json.dumps({"clouds": [0] * MAX_CLOUDS, "user": "crowd"}, separators=(", ", ": ")).encode()
        body += b" " * (limit - len(body))
        request = (
            b"POST /jumps HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        answers = asyncio.run(crowd(port_of(server), request, 300))
        peak = workers_peak_rss(server)
    finally:
        server.stop()
    print(f"\n300 bodies of {len(body):,} bytes: {dict(answers)}; the worker's peak RSS {peak / MIB:.0f} MiB")
    assert set(answers) <= {"201", "503"}, answers
    assert answers["201"] > 0, answers
    assert peak < WORKER_BASELINE + DEFAULT_REQUEST_MEMORY, f"peak {peak / MIB:.0f} MiB"
    assert peak < 320 * MIB, f"peak {peak / MIB:.0f} MiB"


def test_a_crowd_reading_the_largest_record_cannot_push_a_worker_past_its_memory(
    database_url: str, tmp_path: Path
) -> None:
    """GET /jumps/{id} of a 100,000-cloud record whose path visits every cloud rebuilds several MB
    of answer: each read is charged its record's clouds first, so 100 at once on a worker allowed
    64Mi of requests answer 200 or 503 and the worker stays inside its budget."""
    server = start_api(
        database_url,
        tmp_path,
        JOTC_WORKERS="1",
        JOTC_MAX_CLOUDS=str(MAX_CLOUDS),
        JOTC_MAX_BODY_BYTES="",
        JOTC_REQUEST_MEMORY="64Mi",
    )
    try:
        created = httpx.post(
            f"{server.base_url}/jumps", json={"clouds": "0" * MAX_CLOUDS, "max_jump": 1, "user": "reader"}, timeout=30
        )
        assert created.status_code == 201, created.text
        request = b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % created.headers["location"].encode()
        answers = asyncio.run(crowd(port_of(server), request, 100))
        peak = workers_peak_rss(server)
        # Every charge was given back: one read after another, each finds the budget free again.
        after = [httpx.get(f"{server.base_url}{created.headers['location']}", timeout=30) for _ in range(5)]
    finally:
        server.stop()
    print(f"\n100 reads of a {MAX_CLOUDS:,}-cloud record: {dict(answers)}; the worker's peak RSS {peak / MIB:.0f} MiB")
    assert set(answers) <= {"200", "503"}, answers
    assert answers["200"] > 0, answers
    assert peak < WORKER_BASELINE + 64 * MIB, f"peak {peak / MIB:.0f} MiB"
    assert [response.status_code for response in after] == [200] * 5


def stalled_upload(port: int) -> socket.socket:
    """Headers declaring the largest body and its first byte, from 127.0.0.1; then nothing."""
    client = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=("127.0.0.1", 0))
    client.sendall(
        b"POST /jumps HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n{"
        % longest_body(MAX_CLOUDS)
    )
    return client


def answer_of(client: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := client.recv(4096):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return data


def test_a_bystander_is_served_while_one_address_stalls_every_upload_it_can(database_url: str, tmp_path: Path) -> None:
    """Eight upload slots and 32Mi of request memory, a quarter of each for one client: an address
    that opens twenty stalled uploads of the largest body holds two slots and at most its share of
    the memory; a client at another address still records its request. The stalled ones are cut
    off for falling behind the minimum rate, long before the 30 s read timeout."""
    server = start_api(
        database_url,
        tmp_path,
        JOTC_WORKERS="1",
        JOTC_MAX_CLOUDS=str(MAX_CLOUDS),
        JOTC_MAX_BODY_BYTES="",
        JOTC_REQUEST_MEMORY="32Mi",
        JOTC_MAX_UPLOADS="8",
        JOTC_UPLOAD_SHARE_PERCENT="25",
        JOTC_BODY_READ_TIMEOUT="30",
    )
    stalled = [stalled_upload(port_of(server)) for _ in range(20)]
    try:
        bystander = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=20)
        with bystander:
            response = bystander.post(f"{server.base_url}/jumps", json={"clouds": [0, 0], "user": "bystander"})
        assert response.status_code == 201, response.text
        answers = [answer_of(client) for client in stalled]
    finally:
        for client in stalled:
            client.close()
        server.stop()
    statuses = Counter(answer.split(b" ", 2)[1].decode() for answer in answers if answer)
    assert set(statuses) == {"408", "503"}, statuses
    assert sum(statuses.values()) == 20, statuses
    # Past its share a stalled upload waits 1 s for one of the client's own slots, then 503; a
    # slot it is handed is cut off for falling behind the minimum rate, never by the 30 s timeout.
    assert all(b"slower than" in answer for answer in answers if b" 408 " in answer[:13]), answers


@pytest.fixture(scope="module")
def api_one_worker(database_url: str, tmp_root: Path) -> Iterator[ApiServer]:
    server = start_api(database_url, tmp_root, JOTC_WORKERS="1")
    yield server
    server.stop()


def raw_exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(request)
        return answer_of(client)


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 20\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: 20\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: gzip, chunked\r\n",
    ],
)
def test_a_body_framed_by_transfer_encoding_is_refused(api_one_worker: ApiServer, framing: bytes) -> None:
    """The whole chunked body is a valid request, so only a refusal passes: the server reads a
    request framed both ways as chunked, and read 'gzip, chunked' as plain."""
    body = b'{"clouds": [0, 0, 0], "user": "framed"}'
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    answer = raw_exchange(
        port_of(api_one_worker),
        b"POST /jumps HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + framing + b"\r\n" + chunked,
    )
    assert answer.startswith(b"HTTP/1.1 411"), answer[:300]
    assert b"/problems/length-required" in answer
    assert b"connection: close" in answer.lower()


def test_readiness_answers_on_its_own_connection_while_the_traffic_pool_is_stuck(
    database_url: str, tmp_path: Path
) -> None:
    """A pool of one, held by a write that waits on a lock: /readyz still answers 200 from its
    own connection, in time for the probe (3 s)."""
    server = start_api(database_url, tmp_path, JOTC_WORKERS="1", JOTC_DB_POOL_SIZE="1")
    stuck: list[int] = []
    try:
        with psycopg.connect(database_url) as locker:
            locker.execute("LOCK TABLE jump_requests IN ACCESS EXCLUSIVE MODE")
            writer = threading.Thread(
                target=lambda: stuck.append(
                    httpx.post(f"{server.base_url}/jumps", json={"clouds": [0, 0]}, timeout=60).status_code
                )
            )
            writer.start()
            wait_until(
                lambda: (
                    locker.execute(
                        "SELECT count(*) FROM pg_locks WHERE relation = 'jump_requests'::regclass AND NOT granted"
                    ).fetchone()
                    == (1,)
                ),
                timeout=30,
                what="the API's write waiting for the lock",
            )
            ready = httpx.get(f"{server.base_url}/readyz", timeout=3)
            locker.rollback()
        writer.join(60)
    finally:
        server.stop()
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["database"] == {"status": "ok"}
    assert stuck in ([201], [503]), stuck


def test_the_redis_pool_is_bounded(database_url: str, tmp_path: Path, private_redis: RedisServer) -> None:
    """Sixty concurrent requests with Idempotency-Keys on a worker allowed two Redis connections:
    Redis never sees more than those two (and the test's own)."""
    server = start_api(
        database_url, tmp_path, JOTC_WORKERS="1", JOTC_REDIS_MAX_CONNECTIONS="2", REDIS_URL=private_redis.url
    )
    seen: list[int] = []
    done = threading.Event()

    def watch() -> None:
        with socket.create_connection(("127.0.0.1", private_redis.port)) as redis:
            while not done.is_set():
                redis.sendall(b"INFO clients\r\n")
                reply = redis.recv(65536).decode()
                seen.extend(
                    int(line.split(":")[1]) for line in reply.splitlines() if line.startswith("connected_clients:")
                )

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:

        async def burst() -> list[int]:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
                answers = await asyncio.gather(
                    *(
                        http.post(
                            "/jumps", json={"clouds": [0, 0]}, headers={"Idempotency-Key": f"pool-{os.getpid()}-{i}"}
                        )
                        for i in range(60)
                    )
                )
            return [answer.status_code for answer in answers]

        statuses = asyncio.run(burst())
    finally:
        done.set()
        watcher.join(10)
        server.stop()
    assert set(statuses) <= {201, 503}, statuses
    assert seen, "Redis was never asked"
    assert max(seen) <= 3, f"Redis saw {max(seen)} clients: the API's two and the test's one at most"


def test_a_short_admin_token_stops_start_up_and_a_secret_files_newline_is_dropped(
    database_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "PORT": str(port), "JOTC_ADMIN_TOKEN": "abc"}
    result = subprocess.run([JOTC_API], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        "jotc-api: JOTC_ADMIN_TOKEN must be at least 32 characters, got 3; make one with: openssl rand -hex 24"
    )
    token = "a-token-of-thirty-two-characters-at-least"  # pragma: allowlist secret
    server = start_api(database_url, tmp_path, JOTC_WORKERS="1", JOTC_ADMIN_TOKEN=f"{token}\n")
    try:
        stats = httpx.get(f"{server.base_url}/admin/stats", headers={"Authorization": f"Bearer {token}"})
    finally:
        server.stop()
    assert stats.status_code == 200, stats.text
