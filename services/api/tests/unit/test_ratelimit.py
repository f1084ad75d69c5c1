"""Rate-limit arithmetic with an injected clock: fixed windows, their edges, the overflow bucket,
client addresses behind trusted proxies, and the sync to Redis against a fake pipeline. No server,
no Redis, no sleep."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

import pytest

from jotc_api.ratelimit import OVERFLOW, RateLimiter
from jotc_api.settings import RateLimit


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakePipeline:
    """What the limiter uses of redis-py's pipeline: incrby, expire, execute; counts kept here."""

    def __init__(self, store: dict[str, int], fail: bool, gate: asyncio.Event | None = None) -> None:
        self.store = store
        self.fail = fail
        self.gate = gate
        self.ops: list[tuple[str, Any]] = []

    async def __aenter__(self) -> FakePipeline:
        return self

    async def __aexit__(self, *_: object) -> None:
        return None

    def incrby(self, key: str, count: int) -> None:
        self.ops.append(("incrby", (key, count)))

    def expire(self, key: str, seconds: int) -> None:
        self.ops.append(("expire", (key, seconds)))

    async def execute(self) -> list[int | bool]:
        if self.gate is not None:  # a slow Redis: the reply comes when the test opens the gate
            await self.gate.wait()
        if self.fail:
            raise ConnectionError("redis went away")
        replies: list[int | bool] = []
        for op, (key, value) in self.ops:
            if op == "incrby":
                self.store[key] = self.store.get(key, 0) + value
                replies.append(self.store[key])
            else:
                replies.append(True)
        return replies


class FakeRedis:
    def __init__(self) -> None:
        self.store: dict[str, int] = {}
        self.fail = False
        self.gate: asyncio.Event | None = None

    def pipeline(self, transaction: bool) -> FakePipeline:
        assert transaction is False, "the sync is one pipelined round trip, not a transaction"
        return FakePipeline(self.store, self.fail, self.gate)


class FakeLink:
    def __init__(self, client: FakeRedis | None) -> None:
        self.client = client
        self.failures: list[str] = []
        self.successes = 0

    def failed(self, what: str, exc: BaseException) -> None:
        self.failures.append(what)

    def succeeded(self) -> None:
        self.successes += 1


def limiter(
    requests: int = 3, per_seconds: int = 60, *, now: float = 600.0, link: FakeLink | None = None, **kwargs: Any
) -> tuple[RateLimiter, Clock]:
    clock = Clock(now)
    trusted = kwargs.pop("trusted", ())
    made = RateLimiter(RateLimit(requests, per_seconds), link or FakeLink(None), trusted, clock=clock, **kwargs)  # type: ignore[arg-type]
    made.sync_scheduled = True  # no background sync: the tests call sync() themselves
    return made, clock


async def test_a_window_admits_its_budget_then_refuses_until_it_resets() -> None:
    rl, clock = limiter(requests=3, per_seconds=60, now=600.0)
    assert [rl.admit("a")[:2] for _ in range(4)] == [(True, 2), (True, 1), (True, 0), (False, 0)]
    clock.now = 659.9  # still the same window: [600, 660)
    admitted, _, reset = rl.admit("a")
    assert (admitted, reset) == (False, 1), "the reset is rounded up to a whole second, never 0"
    clock.now = 660.0  # the next window starts with a whole budget
    assert rl.admit("a")[:2] == (True, 2)


async def test_reset_counts_the_seconds_to_the_window_edge() -> None:
    rl, _ = limiter(requests=1, per_seconds=3600, now=3600.0 * 10 + 100.5)
    assert rl.admit("a")[2] == 3500
    assert rl.admit("a") == (False, 0, 3500)


async def test_clients_have_budgets_of_their_own() -> None:
    rl, _ = limiter(requests=1)
    assert [rl.admit("a")[0], rl.admit("b")[0], rl.admit("a")[0]] == [True, True, False]


async def test_past_max_clients_new_clients_share_one_overflow_budget() -> None:
    rl, _ = limiter(requests=2, max_clients=2)
    assert [rl.admit("a")[0], rl.admit("b")[0]] == [True, True]
    assert [rl.admit("c")[0], rl.admit("d")[0]] == [True, True], "two new clients spend the overflow budget of 2"
    assert not rl.admit("e")[0], "a third new client finds the overflow budget spent"
    assert set(rl.windows) == {"a", "b", OVERFLOW}, "memory stays bounded by max_clients + 1"
    assert rl.admit("a")[0], "a client tracked before the overflow keeps its own budget"


def test_the_refusal_is_429_with_retry_after_and_ratelimit_headers() -> None:
    rl, _ = limiter(requests=20, per_seconds=3600)
    problem = rl.refusal(42)
    assert problem.status == 429
    assert problem.headers == {
        "Retry-After": "42",
        "RateLimit-Limit": "20",
        "RateLimit-Remaining": "0",
        "RateLimit-Reset": "42",
        "RateLimit-Policy": "20;w=3600",
    }


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "expected"),
    [
        ("203.0.113.7", [], [], "203.0.113.7"),
        ("203.0.113.7", ["198.51.100.1"], [], "203.0.113.7"),  # untrusted peer: the header is not believed
        ("10.0.0.1", ["198.51.100.1"], ["10.0.0.0/8"], "198.51.100.1"),
        ("10.0.0.1", ["198.51.100.1, 10.0.0.2"], ["10.0.0.0/8"], "198.51.100.1"),  # right to left, proxies skipped
        ("10.0.0.1", ["1.1.1.1", "198.51.100.1"], ["10.0.0.0/8"], "198.51.100.1"),  # every line, as one list
        ("10.0.0.1", ["forged, 198.51.100.1"], ["10.0.0.0/8"], "198.51.100.1"),
        ("10.0.0.1", ["198.51.100.1, garbage"], ["10.0.0.0/8"], "10.0.0.1"),  # a bad hop ends the walk
        ("10.0.0.1", ["10.0.0.2"], ["10.0.0.0/8"], "10.0.0.2"),  # all trusted: the leftmost proxy
        ("10.0.0.1", ['"[2001:db8::1]:443"'], ["10.0.0.0/8"], "2001:db8::/64"),  # an IPv6 client is its /64
        ("::ffff:203.0.113.7", [], [], "203.0.113.7"),  # IPv4-mapped peer
        ("203.0.113.7:5678", [], [], "203.0.113.7"),
        ("testclient", ["198.51.100.1"], ["10.0.0.0/8"], "unknown"),
        ("testclient", [], [], "unknown"),
        ("[2001:db8::7]:443", [], [], "2001:db8::/64"),
        ("10.0.0.1", [], ["10.0.0.0/8"], "10.0.0.1"),  # a trusted proxy that forwards nothing is the client
    ],
)
def test_client_key(peer: str, forwarded: list[str], trusted: list[str], expected: str) -> None:
    rl, _ = limiter(trusted=[ipaddress.ip_network(network) for network in trusted])
    assert rl.client_key(peer, forwarded) == expected
    assert rl.client_key(peer, forwarded) == expected, "asked again (the peer's key is cached): the same bucket"


async def test_sync_adds_local_counts_to_redis_and_learns_the_cluster_total() -> None:
    redis = FakeRedis()
    rl, _ = limiter(requests=10, per_seconds=60, now=600.0, link=FakeLink(redis))
    for _ in range(3):
        rl.admit("a")
    redis.store["jotc:rl:10:a"] = 5  # what other workers added to this window meanwhile
    await rl.sync()
    assert redis.store["jotc:rl:10:a"] == 8
    window = rl.windows["a"]
    assert (window.synced_total, window.unsynced) == (8, 0)
    assert rl.admit("a")[:2] == (True, 1), "admission counts what the cluster used"
    assert rl.admit("a")[:2] == (True, 0)
    assert not rl.admit("a")[0]


async def test_a_failed_sync_keeps_the_counts_local_and_says_so() -> None:
    redis = FakeRedis()
    link = FakeLink(redis)
    rl, _ = limiter(requests=10, link=link)
    rl.admit("a")
    redis.fail = True
    await rl.sync()
    assert link.failures == ["rate-limit sync"]
    assert rl.windows["a"].unsynced == 1, "nothing admitted is forgotten when Redis fails"
    redis.fail = False
    await rl.sync()
    assert (rl.windows["a"].synced_total, rl.windows["a"].unsynced) == (1, 0)


async def test_sync_forgets_finished_windows() -> None:
    rl, clock = limiter(requests=10, per_seconds=60, now=600.0)
    rl.admit("a")
    clock.now = 660.0
    rl.admit("b")
    await rl.sync()
    assert set(rl.windows) == {"b"}


async def test_a_sync_never_overlaps_the_one_still_waiting_on_redis() -> None:
    """A second sync started while the first still waits on Redis would send the same admissions
    again: the cluster would count them twice and throttle the client early."""
    redis = FakeRedis()
    redis.gate = asyncio.Event()
    rl, _ = limiter(requests=10, per_seconds=60, now=600.0, link=FakeLink(redis))
    for _ in range(3):
        rl.admit("a")
    rl.start_sync()
    first = rl.sync_task
    await asyncio.sleep(0)  # the first sync runs up to Redis, and waits there
    rl.admit("a")
    rl.start_sync()
    assert rl.sync_task is first, "a second sync started while the first was in flight"
    redis.gate.set()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while rl.windows["a"].unsynced and loop.time() < deadline:  # the next interval's sync sends the rest
        await asyncio.sleep(0.01)
    assert redis.store["jotc:rl:10:a"] == 4, f"Redis counted {redis.store['jotc:rl:10:a']} of 4 admissions"
    assert (rl.windows["a"].synced_total, rl.windows["a"].unsynced) == (4, 0)
