"""Redis behind Sentinel (one master, one replica, three sentinels, each a redis-server of its own)
and the real server finding the master through them: the master SIGKILLed under load, and a master
demoted by a manual failover while the API holds connections to it. Each test prints its figures."""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import httpx
import psycopg
import pytest
from jotc_provision import ProvisionError, RedisSentinelGroup, redis_call, wait_until
from support import fake_client, start_api

BODY = {"clouds": [0, 0, 1, 0, 0, 1, 0], "user": "failover@example.com"}
HEAVY_LIMIT = 30  # requests a day per client address
PROMOTION_BOUND = 30  # seconds; a run on an idle machine is about 2 (down-after 1 s, then the election)


@pytest.fixture
def sentinel_group(tmp_path: Path) -> Iterator[RedisSentinelGroup]:
    try:
        group = RedisSentinelGroup(tmp_path / "redis-sentinel")
    except ProvisionError as error:
        pytest.fail(str(error))
    with group:
        yield group


@dataclass(frozen=True)
class Answer:
    started: float
    ended: float
    key: str | None
    status: int  # 0: no answer (the connection failed)
    kind: str  # the problem's type, the record's id, or the transport error
    replayed: bool = False
    retry_after: str | None = None


def post(http: httpx.Client, key: str | None) -> Answer:
    headers = {"x-forwarded-for": fake_client()}  # rate limiting is on; no client nears its limit
    if key is not None:
        headers["idempotency-key"] = key
    started = time.monotonic()
    try:
        response = http.post("/jumps", json=BODY, headers=headers)
    except httpx.HTTPError as error:
        return Answer(started, time.monotonic(), key, 0, type(error).__name__)
    ended = time.monotonic()
    body = response.json()
    kind = str(body.get("id") if response.status_code == 201 else body.get("type", ""))
    replayed = response.headers.get("idempotent-replayed") == "true"
    return Answer(started, ended, key, response.status_code, kind, replayed, response.headers.get("retry-after"))


class Posters:
    """``count`` threads each running ``run`` from the with block's start until its end."""

    def __init__(self, base_url: str, count: int) -> None:
        self.base_url = base_url
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run) for _ in range(count)]

    def run(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)


class Load(Posters):
    """``clients`` threads, each posting in turn with a fresh Idempotency-Key and without one, until
    stopped; every answer is kept."""

    def __init__(self, base_url: str, clients: int = 4) -> None:
        super().__init__(base_url, clients)
        self.answers: list[Answer] = []

    def run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=15) as http:
            while not self.stop.is_set():
                for key in (f"failover-{uuid.uuid4()}", None):
                    answer = post(http, key)
                    with self.lock:
                        self.answers.append(answer)

    def keyed(self) -> list[Answer]:
        with self.lock:
            return [a for a in self.answers if a.key is not None]


class Heavy(Posters):
    """One client address posting without a key from four threads, about 80 a second in all, until
    stopped: the rate limit of one client across the failover. Every answer is kept, with when it
    came."""

    def __init__(self, base_url: str, threads: int = 4) -> None:
        super().__init__(base_url, threads)
        self.address = fake_client()
        self.answers: list[tuple[float, int]] = []  # (when it came, status)

    def run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=15) as http:
            while not self.stop.wait(0.05):
                try:
                    status = http.post("/jumps", json=BODY, headers={"x-forwarded-for": self.address}).status_code
                except httpx.HTTPError:
                    status = 0
                with self.lock:
                    self.answers.append((time.monotonic(), status))

    def statuses(self, since: float = 0.0, until: float = float("inf")) -> Counter[int]:
        with self.lock:
            return Counter(status for at, status in self.answers if since <= at <= until)


def clear_of_a_day_boundary(seconds: float) -> None:
    """Wait, if need be, until no UTC day boundary falls within the next ``seconds``: the heavy
    client's limit is per day, and a new day's window would rightly admit it again."""
    left = 86400 - time.time() % 86400
    if left < seconds:
        time.sleep(left + 1)


def redis_key(key: str) -> str:
    return "jotc:idem:" + hashlib.sha256(key.encode()).hexdigest()


def recorded(database_url: str, ids: list[str]) -> int:
    with psycopg.connect(database_url) as db:
        row = db.execute("SELECT count(*) FROM jump_requests WHERE id = ANY(%s::uuid[])", (ids,)).fetchone()
    assert row is not None
    return int(row[0])


def test_the_master_killed_under_load(database_url: str, tmp_path: Path, sentinel_group: RedisSentinelGroup) -> None:
    """SIGKILL of the master under load with Idempotency-Keys: no 500, no answer lost, every 201 has
    its row; keyed requests are 503 idempotency-unavailable (with Retry-After) only between the kill
    and the promotion, requests without a key are 201 throughout; the API follows the new master
    without a restart and replays from it what was replicated before the kill; one client posting
    past its rate limit throughout is admitted at least its limit and at most 2 x (2 workers)."""
    server = start_api(
        database_url,
        tmp_path,
        REDIS_URL="",  # blank is unset: no password, database 0
        REDIS_SENTINELS=sentinel_group.sentinels_setting,
        JOTC_RATE_LIMIT=f"{HEAVY_LIMIT}/day",  # no other client nears it: each posts once or twice
        JOTC_TRUSTED_PROXIES="127.0.0.1",
    )
    try:
        base = server.base_url
        with httpx.Client(base_url=base, timeout=15) as http:
            early = [post(http, f"early-{uuid.uuid4()}") for _ in range(20)]
        assert {a.status for a in early} == {201}, early
        wait_until(sentinel_group.replicated, timeout=10, what="the replica holding the early keys")

        clear_of_a_day_boundary(PROMOTION_BOUND * 4)
        with Heavy(base) as heavy, Load(base) as load:
            began = time.monotonic()
            wait_until(
                lambda: time.monotonic() - began >= 3 and len(load.keyed()) >= 100,
                timeout=60,
                what="3 s of load and 100 keyed answers before the kill",
                interval=0.1,
            )
            killed_at = time.monotonic()  # just before: nothing may fail until then
            old = sentinel_group.kill_master()
            new = sentinel_group.wait_for_master(other_than=old, timeout=PROMOTION_BOUND)
            promoted_at = time.monotonic()

            def following() -> bool:
                """The last 40 keyed answers, all begun after the promotion, are all 201: each worker
                has found the new master."""
                after = [a for a in load.keyed() if a.started > promoted_at]
                return len(after) >= 40 and all(a.status == 201 for a in after[-40:])

            wait_until(following, timeout=PROMOTION_BOUND, what="keyed requests answered 201 again", interval=0.1)
            followed_at = time.monotonic()
            # More load on the new master: nothing may fail any more.
            count = len(load.keyed())
            wait_until(
                lambda: time.monotonic() - followed_at >= 4 and len(load.keyed()) >= count + 100,
                timeout=60,
                what="4 s of load and 100 keyed answers after",
                interval=0.1,
            )
        answers = load.answers

        with httpx.Client(base_url=base, timeout=15) as http:
            replays_early = [post(http, a.key) for a in early]
            acknowledged = [a for a in answers if a.key is not None and a.status == 201 and a.ended < killed_at]
            replays_load = [post(http, a.key) for a in acknowledged]
            # Answered 201 between the kill and the API's return to 201s: among them, requests whose
            # key was claimed on the old master and whose answer could not be kept there.
            straddling = [a for a in answers if a.key is not None and a.status == 201 and a.ended >= killed_at]
            straddling = [a for a in straddling if a.ended <= followed_at]
            replays_straddling = [post(http, a.key) for a in straddling]
            refused = [a for a in answers if a.status == 503]
            retried = [post(http, a.key) for a in refused]
            fresh = post(http, f"fresh-{uuid.uuid4()}")
            ready = http.get("/readyz").json()["checks"]["redis"]["status"]
        workers_started = server.log().count("Started worker-")
    finally:
        server.stop()

    keyed = [a for a in answers if a.key is not None]
    plain = [a for a in answers if a.key is None]
    statuses = Counter(a.status for a in answers)
    window = (min(a.ended for a in refused), max(a.ended for a in refused)) if refused else None

    def outcomes(first: list[Answer], again: list[Answer]) -> dict[str, int]:
        return dict(
            Counter(
                "replayed, same id" if r.replayed and r.kind == a.kind else f"{r.status}{' anew' * (r.status == 201)}"
                for a, r in zip(first, again, strict=True)
            )
        )

    replay_outcomes = outcomes(acknowledged, replays_load)
    print(
        f"\n{len(answers)} requests ({len(keyed)} keyed) over {answers[-1].ended - answers[0].started:.1f} s; "
        f"statuses {dict(statuses)}; promotion {promoted_at - killed_at:.2f} s after the kill; "
        f"keyed 503s: {len(refused)}"
        + (
            f", first {window[0] - killed_at:.2f} s and last {window[1] - killed_at:.2f} s after the kill "
            f"(window {window[1] - window[0]:.2f} s)"
            if window
            else ""
        )
        + f"; all 201 again {followed_at - killed_at:.2f} s after the kill (40 in a row); "
        f"one client at its limit of {HEAVY_LIMIT}: {dict(heavy.statuses())}, between the kill and the "
        f"return {dict(heavy.statuses(since=killed_at, until=followed_at))}; "
        f"keys acknowledged before the kill, asked again: {replay_outcomes}; "
        f"acknowledged after the kill, before the return: {outcomes(straddling, replays_straddling)}"
    )

    assert statuses.keys() <= {201, 503}, statuses  # no 500, no connection failed, nothing else
    assert {a.status for a in plain} == {201}, "a request without a key needs no Redis"
    for answer in refused:
        assert answer.key is not None, answer
        assert answer.kind.endswith("/idempotency-unavailable"), answer
        assert answer.retry_after, answer
        assert answer.ended > killed_at, "a 503 before the master was killed"
    assert window is not None, "no request met the failover"
    assert window[1] - window[0] < PROMOTION_BOUND, window
    assert all(a.status == 201 for a in keyed if a.started > followed_at), "503s after the API followed"
    again = [*replays_load, *replays_straddling, *retried, fresh]
    ids = [a.kind for a in [*answers, *early, *again] if a.status == 201 and not a.replayed]
    assert recorded(database_url, ids) == len(set(ids)) == len(ids), "a 201 without its row"
    # Replicated before the kill: the new master replays them, with the first answer's id.
    assert all(r.status == 201 and r.replayed for r in replays_early), replays_early
    assert [r.kind for r in replays_early] == [a.kind for a in early]
    # Acknowledged under load just before the kill: replayed, unless the master died before its
    # replica had the key (then answered anew, or 409 while a replicated claim lasts). Never a 5xx.
    assert {r.status for r in [*replays_load, *replays_straddling]} <= {201, 409}, replay_outcomes
    # A 503 recorded nothing: the same key afterwards is answered anew.
    assert all(r.status == 201 and not r.replayed for r in retried), retried
    # The API follows the new master, without a restart: its keys are there, the old one is gone.
    assert fresh.status == 201
    assert fresh.key is not None
    assert redis_call(new.port, "EXISTS", redis_key(fresh.key)) == 1
    assert not old.alive
    assert ready == "ok"
    # The rate limit of one client held through the failover: each of the 2 workers counts alone
    # while Redis is away, from the total it last saw, so at most 2 x the limit in all; a limiter
    # that let requests through while Redis was away would admit what came between the kill and
    # the API's return, more than 2 x the limit.
    heavy_statuses = heavy.statuses()
    in_the_window = heavy.statuses(since=killed_at, until=followed_at)
    assert heavy_statuses.keys() <= {201, 429}, heavy_statuses
    assert in_the_window.total() > 2 * HEAVY_LIMIT, f"the heavy client sent too few in the window: {in_the_window}"
    assert HEAVY_LIMIT <= heavy_statuses[201] <= 2 * HEAVY_LIMIT, (heavy_statuses, in_the_window)
    assert workers_started == 2, "a worker restarted"


def test_a_demoted_master_is_left_for_the_one_the_sentinels_name(
    database_url: str, tmp_path: Path, sentinel_group: RedisSentinelGroup
) -> None:
    """A master demoted while the API holds connections to it, two ways. SENTINEL FAILOVER: the
    sentinels close the demoted master's client connections as they turn it into a replica, so the
    pool reconnects through them (one 503 at most per pooled connection). A demotion behind the
    sentinels' back (REPLICAOF by hand, the sentinels still naming it): every write there is
    answered READONLY, which redis-py turns into a dropped connection and ConnectionError: keyed
    requests are 503, never 500, the others 201, until the master the sentinels name takes writes
    again; then 201 without a restart."""
    max_connections = 4
    server = start_api(
        database_url,
        tmp_path,
        REDIS_URL="",
        REDIS_SENTINELS=sentinel_group.sentinels_setting,
        JOTC_REDIS_MAX_CONNECTIONS=str(max_connections),
    )

    def keyed_201_again(http: httpx.Client, answers: list[Answer]) -> None:
        def following() -> bool:
            answers.append(post(http, f"demoted-{uuid.uuid4()}"))
            return len(answers) >= 20 and all(a.status == 201 for a in answers[-20:])

        wait_until(following, timeout=PROMOTION_BOUND, what="keyed requests answered 201 on the master")

    try:
        with httpx.Client(base_url=server.base_url, timeout=15) as http:
            before = [post(http, f"demoted-{uuid.uuid4()}") for _ in range(20)]
            assert {a.status for a in before} == {201}, before
            wait_until(sentinel_group.replicated, timeout=10, what="the replica holding the keys")
            old = sentinel_group.master()
            redis_call(sentinel_group.sentinels[0].port, "SENTINEL", "FAILOVER", sentinel_group.service)
            new = sentinel_group.wait_for_master(other_than=old, timeout=PROMOTION_BOUND)
            wait_until(
                lambda: old.info("replication").get("master_link_status") == "up",
                timeout=PROMOTION_BOUND,
                what="the old master a replica of the new one",
            )
            after_failover: list[Answer] = []
            keyed_201_again(http, after_failover)
            replays = [post(http, a.key) for a in before]

            # Behind the sentinels' back: the master they name becomes a replica of the other node.
            redis_call(old.port, "REPLICAOF", "NO", "ONE")
            redis_call(new.port, "REPLICAOF", "127.0.0.1", str(old.port))
            demoted = [post(http, key) for key in [f"demoted-{uuid.uuid4()}", None] * 10]
            redis_call(new.port, "REPLICAOF", "NO", "ONE")
            redis_call(old.port, "REPLICAOF", "127.0.0.1", str(new.port))
            after_readonly: list[Answer] = []
            keyed_201_again(http, after_readonly)
            named = sentinel_group.master_address()
    finally:
        server.stop()
    refused = [a for a in after_failover if a.status != 201]
    print(
        f"\nafter SENTINEL FAILOVER: {len(refused)} keyed requests refused before all went to the new master; "
        f"demoted by hand: {Counter((a.key is not None, a.status) for a in demoted)} (keyed?, status); "
        f"{len([a for a in after_readonly if a.status != 201])} refused after it was master again"
    )
    assert all(a.status == 503 and a.kind.endswith("/idempotency-unavailable") for a in refused), refused
    # Each worker drops each of its connections to the demoted master once at most.
    assert len(refused) <= 2 * max_connections, refused
    assert all(r.status == 201 and r.replayed for r in replays), replays
    for answer in demoted:
        expected = (503, "/idempotency-unavailable") if answer.key is not None else (201, "")
        assert answer.status == expected[0], answer
        assert answer.kind.endswith(expected[1]), answer
    assert named == ("127.0.0.1", new.port), "the sentinels moved: the test did not test READONLY"
    assert all(redis_call(new.port, "EXISTS", redis_key(str(a.key))) == 1 for a in after_readonly[-20:])
