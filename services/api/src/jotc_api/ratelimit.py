"""Rate limiting: cluster-wide fixed windows per client address, counted locally, synced in batches.

JOTC_RATE_LIMIT (e.g. ``600/minute`` per client address) uses fixed windows.
Each worker counts admissions locally and, every ``SYNC_SECONDS``, adds them to
the window's counter in Redis in one pipelined round trip, learning the
cluster-wide total in the same reply. A request is admitted while (cluster
total last seen + this worker's unsynced count) is below the limit. The price
of batching is overshoot: between two syncs every other worker may admit
requests this one has not heard of yet, so one client can exceed the limit by
at most what it manages to send to the other workers in one sync interval.
Without Redis each worker enforces the limit alone. A client is what clients.py says: an address,
or, for the load test's requests carrying its token (JOTC_LOADTEST_TOKEN), one simulated user.

Traced, a sync is a trace of its own (it serves every request of its interval) linked to the
server span of each sampled request whose count it carries, the first MAX_SYNC_LINKS of them:
a flood cannot grow one span without bound. A request's server span is open when it is counted
for POST /jumps and POST /jotc (served.py); the other routes' spans begin inside Litestar, after.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send
from opentelemetry.trace import SpanContext, Status, StatusCode
from prometheus_client import Counter
from redis.asyncio import Redis

from jotc_api import tracing
from jotc_api.clients import Clients
from jotc_api.problems import Problem
from jotc_api.redis_link import REDIS_ERRORS, REDIS_TIMEOUT_SECONDS, RedisLink
from jotc_api.settings import RateLimit
from jotc_api.transport import send_answer

RATE_LIMITED = Counter("jotc_rate_limited", "Requests answered 429")
SYNC_SECONDS = 0.1
MAX_CLIENTS = 100_000  # tracked per worker per window; past it, new clients share OVERFLOW
OVERFLOW = "overflow"
MAX_SYNC_LINKS = 128  # the SDK's default link limit (OTEL_SPAN_LINK_COUNT_LIMIT) too


@dataclass(slots=True)
class Window:
    index: int
    synced_total: int = 0  # cluster-wide count at the last sync, this worker's included
    unsynced: int = 0  # admitted here since the last sync


class RateLimiter:
    """Per-client fixed-window limits, counted locally, synced to Redis every SYNC_SECONDS."""

    def __init__(
        self,
        limit: RateLimit,
        link: RedisLink,
        trusted_proxies: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network],
        *,
        loadtest_token: str | None = None,
        clients: Clients | None = None,
        max_clients: int = MAX_CLIENTS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.limit = limit
        self.link = link
        # The worker's Clients when given (app.py shares one with the upload bounds).
        self.clients = clients if clients is not None else Clients(trusted_proxies, loadtest_token)
        self.max_clients = max_clients
        self.clock = clock
        self.windows: dict[str, Window] = {}
        self.sync_scheduled = False
        self.sync_task: asyncio.Task[None] | None = None
        # Traced: the sampled requests counted since the last sync (their server spans, at most
        # MAX_SYNC_LINKS), and how many there were.
        self.traced: list[SpanContext] = []
        self.sampled = 0

    def client_key(self, peer: str, forwarded_for: list[str]) -> str:
        return self.clients.key(peer, forwarded_for)

    def admit(self, client: str) -> tuple[bool, int, int]:
        """(admitted, remaining, seconds until the window resets). Past ``max_clients`` tracked
        clients, a new one shares one overflow budget: made-up addresses cannot grow memory or
        Redis without bound, and a flood of them is limited as one client."""
        now = self.clock()
        index = int(now // self.limit.per_seconds)
        reset = max(1, math.ceil((index + 1) * self.limit.per_seconds - now))
        window = self.windows.get(client)
        if window is None and len(self.windows) >= self.max_clients:
            client = OVERFLOW
            window = self.windows.get(client)
        if window is None or window.index != index:
            window = self.windows[client] = Window(index)
        used = window.synced_total + window.unsynced
        if used >= self.limit.requests:
            RATE_LIMITED.inc()
            return False, 0, reset
        window.unsynced += 1
        if tracing.tracer is not None:
            self.note_sampled()
        if not self.sync_scheduled:
            self.sync_scheduled = True
            asyncio.get_running_loop().call_later(SYNC_SECONDS, self.start_sync)
        return True, self.limit.requests - used - 1, reset

    def note_sampled(self) -> None:
        """Remember the current span, when sampled, for the next sync's links."""
        context = tracing.sampled_context()
        if context is not None:
            self.sampled += 1
            if len(self.traced) < MAX_SYNC_LINKS:
                self.traced.append(context)

    def refusal(self, reset: int) -> Problem:
        return Problem(
            429,
            "rate-limited",
            f"more than {self.limit.requests} requests in {self.limit.per_seconds} s from this "
            f"address; retry in {reset} s",
            headers={
                "Retry-After": str(reset),
                "RateLimit-Limit": str(self.limit.requests),
                "RateLimit-Remaining": "0",
                "RateLimit-Reset": str(reset),
                "RateLimit-Policy": f"{self.limit.requests};w={self.limit.per_seconds}",
            },
        )

    def start_sync(self) -> None:
        loop = asyncio.get_running_loop()
        if self.sync_task is not None and not self.sync_task.done():
            # The last sync still waits on Redis with this worker's counts in flight: a second one
            # now would send them again (counted twice cluster-wide). Try again next interval.
            loop.call_later(SYNC_SECONDS, self.start_sync)
            return
        self.sync_scheduled = False
        self.sync_task = loop.create_task(self.sync())  # kept: tasks are weakly held

    async def sync(self) -> None:
        current = int(self.clock() // self.limit.per_seconds)
        # Forget finished windows; without Redis, unsynced counts simply stay local.
        for client in [c for c, w in self.windows.items() if w.index < current]:
            del self.windows[client]
        carried, sampled = self.traced, self.sampled
        self.traced, self.sampled = [], 0
        pending = [(client, window) for client, window in self.windows.items() if window.unsynced]
        if not pending or self.link.client is None:
            return
        sent = [window.unsynced for _, window in pending]
        attributes = {"jotc.rate_limit.clients": len(pending), "jotc.rate_limit.sampled_requests": sampled}
        # Off the request path: a sync serves every request of the last interval, so it is a trace
        # of its own, linked to the sampled ones (sampled whenever one of them was).
        with tracing.linked_root("redis rate-limit sync", carried, attributes) as span:
            try:
                replies = await self.send_counts(self.link.client, pending, sent)
            except REDIS_ERRORS as exc:
                if span is not None:
                    span.set_status(Status(StatusCode.ERROR, "the counts were not synced"))
                self.link.failed("rate-limit sync", exc)
                return
        self.link.succeeded()
        for (_, window), count, total in zip(pending, sent, replies[0::2], strict=True):
            window.unsynced -= count
            window.synced_total = int(total)
        if any(window.unsynced for window in self.windows.values()) and not self.sync_scheduled:
            self.sync_scheduled = True
            asyncio.get_running_loop().call_later(SYNC_SECONDS, self.start_sync)

    async def send_counts(self, client: Redis, pending: list[tuple[str, Window]], sent: list[int]) -> list[Any]:
        """INCRBY + EXPIRE per active client in one pipelined round trip; the replies."""
        async with client.pipeline(transaction=False) as pipe:
            for (address, window), count in zip(pending, sent, strict=True):
                key = f"jotc:rl:{window.index}:{address}"
                pipe.incrby(key, count)
                pipe.expire(key, self.limit.per_seconds * 2)
            return await asyncio.wait_for(pipe.execute(), REDIS_TIMEOUT_SECONDS * 2)


EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def rate_limit_middleware(limiter: RateLimiter, app: ASGIApp) -> ASGIApp:
    """429 with Retry-After and RateLimit-* once a client address spends its window's budget.
    Health, readiness and metrics are exempt: probes and scrapes must never be refused."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or scope["path"].rstrip("/") in EXEMPT_PATHS:
            await app(scope, receive, send)
            return
        admitted, _, reset = limiter.admit(limiter.clients.of(scope))
        if admitted:
            await app(scope, receive, send)
            return
        await send_answer(send, *limiter.refusal(reset).render())

    return middleware
