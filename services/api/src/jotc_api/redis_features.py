"""Redis, off the hot path: cluster-wide rate limits synced in batches, and idempotency keys.

Redis is optional and may fail at any moment; nothing here may stop or stall
/jumps. Every call has a short timeout; a failure is counted in
``jotc_redis_failures_total`` and logged once per episode (and once when Redis
is back), not once per request; the client reconnects by itself.

Rate limits (JOTC_RATE_LIMIT, e.g. ``600/minute`` per client address) use
fixed windows. Each worker counts admissions locally and, every
``SYNC_SECONDS``, adds them to the window's counter in Redis in one pipelined
round trip, learning the cluster-wide total in the same reply. A request is
admitted while (cluster total last seen + this worker's unsynced count) is
below the limit. The price of batching is overshoot: between two syncs every
other worker may admit requests this one has not heard of yet, so one client
can exceed the limit by at most what it manages to send to the other workers
in one sync interval. Without Redis each worker enforces the limit alone.

Idempotency keys (the ``Idempotency-Key`` header) are stored in Redis for 24 h
with a fingerprint of the request; see ``IdempotencyStore``.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

import msgspec
import structlog
from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPResponseBodyEvent, HTTPResponseStartEvent, Receive, Scope, Send
from prometheus_client import Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError

from jotc_api.problems import PROBLEM_JSON, Problem
from jotc_api.settings import RateLimit

log = structlog.get_logger("jotc.redis")

REDIS_FAILURES = Counter("jotc_redis_failures", "Redis operations that failed or timed out", ["operation"])
RATE_LIMITED = Counter("jotc_rate_limited", "Requests answered 429")

REDIS_TIMEOUT_SECONDS = 0.25
SYNC_SECONDS = 0.1
IDEMPOTENCY_TTL_SECONDS = 24 * 3600
IN_FLIGHT_TTL_SECONDS = 120  # a worker that dies mid-request must not block its key for a day


class RedisLink:
    """The Redis client and the episode bookkeeping shared by every Redis feature of a worker."""

    def __init__(self, url: str | None) -> None:
        self.client: Redis | None = (
            Redis.from_url(
                url,
                socket_timeout=REDIS_TIMEOUT_SECONDS,
                socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
                retry_on_timeout=False,
                health_check_interval=30,
            )
            if url
            else None
        )
        self.healthy = self.client is not None

    def failed(self, operation: str, exc: BaseException) -> None:
        REDIS_FAILURES.labels(operation).inc()
        if self.healthy:
            self.healthy = False
            log.warning("redis unavailable; rate limits per worker, idempotency keys refused", error=str(exc))

    def succeeded(self) -> None:
        if not self.healthy:
            self.healthy = True
            log.info("redis available again")

    async def ping(self) -> str:
        """/readyz: "ok", "degraded" (unreachable; the API keeps serving) or "not configured"."""
        if self.client is None:
            return "not configured"
        try:
            await asyncio.wait_for(self.client.ping(), REDIS_TIMEOUT_SECONDS * 2)
        except (RedisError, OSError, TimeoutError) as exc:
            self.failed("ping", exc)
            return "degraded"
        self.succeeded()
        return "ok"

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()


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
    ) -> None:
        self.limit = limit
        self.link = link
        self.trusted = tuple(trusted_proxies)
        self.windows: dict[str, Window] = {}
        self.sync_scheduled = False

    def client_address(self, peer: str, forwarded_for: str | None) -> str:
        """The peer, unless it is a trusted proxy: then the right-most untrusted X-Forwarded-For hop."""
        if not forwarded_for or not self.is_trusted(peer):
            return peer
        for hop in reversed([part.strip() for part in forwarded_for.split(",")]):
            if not self.is_trusted(hop):
                return hop
        return peer

    def is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.trusted)

    def admit(self, client: str) -> tuple[bool, int, int]:
        """(admitted, remaining, seconds until the window resets)."""
        now = time.time()
        index = int(now // self.limit.per_seconds)
        reset = max(1, math.ceil((index + 1) * self.limit.per_seconds - now))
        window = self.windows.get(client)
        if window is None or window.index != index:
            window = self.windows[client] = Window(index)
        used = window.synced_total + window.unsynced
        if used >= self.limit.requests:
            RATE_LIMITED.inc()
            return False, 0, reset
        window.unsynced += 1
        if not self.sync_scheduled:
            self.sync_scheduled = True
            asyncio.get_running_loop().call_later(SYNC_SECONDS, self.start_sync)
        return True, self.limit.requests - used - 1, reset

    def start_sync(self) -> None:
        self.sync_scheduled = False
        task = asyncio.get_running_loop().create_task(self.sync())
        task.add_done_callback(lambda _: None)

    async def sync(self) -> None:
        current = int(time.time() // self.limit.per_seconds)
        # Forget finished windows; without Redis, unsynced counts simply stay local.
        for client in [c for c, w in self.windows.items() if w.index < current]:
            del self.windows[client]
        pending = [(client, window) for client, window in self.windows.items() if window.unsynced]
        if not pending or self.link.client is None:
            return
        sent = [window.unsynced for _, window in pending]
        try:
            async with self.link.client.pipeline(transaction=False) as pipe:
                for (client, window), count in zip(pending, sent, strict=True):
                    key = f"jotc:rl:{window.index}:{client}"
                    pipe.incrby(key, count)
                    pipe.expire(key, self.limit.per_seconds * 2)
                replies = await asyncio.wait_for(pipe.execute(), REDIS_TIMEOUT_SECONDS * 2)
        except (RedisError, OSError, TimeoutError) as exc:
            self.link.failed("rate-limit sync", exc)
            return
        self.link.succeeded()
        for (_, window), count, total in zip(pending, sent, replies[0::2], strict=True):
            window.unsynced -= count
            window.synced_total = int(total)
        if any(window.unsynced for window in self.windows.values()) and not self.sync_scheduled:
            self.sync_scheduled = True
            asyncio.get_running_loop().call_later(SYNC_SECONDS, self.start_sync)


class StoredReply(msgspec.Struct):
    fingerprint: str
    done: bool
    status: int = 0
    media_type: str = ""
    body: bytes = b""
    location: str | None = None


class IdempotencyUnavailable(Exception):
    """Redis cannot be reached: the promise an Idempotency-Key asks for cannot be kept."""


class IdempotencyStore:
    """First request with a key: claim it (SET NX, short TTL) and process; keep the answer for
    24 h. Repeat with the same fingerprint: the kept answer, or 409 while the first is in flight.
    Different fingerprint: 422. Answers of 500 and above are not kept: the key is released so the
    client may retry it."""

    def __init__(self, link: RedisLink) -> None:
        self.link = link
        self.encoder = msgspec.msgpack.Encoder()
        self.decoder = msgspec.msgpack.Decoder(StoredReply)

    @staticmethod
    def fingerprint(route: str, media_type: str, query: bytes, body: bytes) -> str:
        digest = hashlib.sha256()
        for part in (route.encode(), media_type.encode(), query, body):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
        return digest.hexdigest()

    async def claim(self, key: str, fingerprint: str) -> StoredReply | None:
        """None: the key is ours, go ahead. Else what is stored under it."""
        client = self.require()
        redis_key = self.redis_key(key)
        claim = self.encoder.encode(StoredReply(fingerprint, done=False))
        try:
            claimed = await client.set(redis_key, claim, nx=True, ex=IN_FLIGHT_TTL_SECONDS)
            stored = None if claimed else await client.get(redis_key)
        except (RedisError, OSError, TimeoutError) as exc:
            self.link.failed("idempotency claim", exc)
            raise IdempotencyUnavailable(str(exc)) from None
        self.link.succeeded()
        if claimed:
            return None
        if stored is None:  # expired between SET and GET: claim again
            return await self.claim(key, fingerprint)
        return self.decoder.decode(stored if isinstance(stored, bytes) else stored.encode())

    async def keep(self, key: str, reply: StoredReply) -> None:
        await self.write("idempotency keep", self.redis_key(key), reply)

    async def release(self, key: str) -> None:
        client = self.require()
        try:
            await client.delete(self.redis_key(key))
        except (RedisError, OSError, TimeoutError) as exc:
            self.link.failed("idempotency release", exc)

    async def write(self, operation: str, redis_key: str, reply: StoredReply) -> None:
        client = self.require()
        try:
            await client.set(redis_key, self.encoder.encode(reply), ex=IDEMPOTENCY_TTL_SECONDS)
        except (RedisError, OSError, TimeoutError) as exc:
            # The row is committed; the client gets its answer. A retry after the in-flight
            # claim expires would be processed again: logged, counted, and documented.
            self.link.failed(operation, exc)
        else:
            self.link.succeeded()

    def require(self) -> Redis:
        if self.link.client is None:
            raise IdempotencyUnavailable("REDIS_URL is not configured")
        return self.link.client

    @staticmethod
    def redis_key(key: str) -> str:
        return "jotc:idem:" + hashlib.sha256(key.encode()).hexdigest()


def valid_idempotency_key(raw: bytes) -> bool:
    return 1 <= len(raw) <= 255 and all(0x21 <= byte <= 0x7E for byte in raw)


EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def rate_limit_middleware(limiter: RateLimiter, app: ASGIApp) -> ASGIApp:
    """429 with Retry-After and RateLimit-* once a client address spends its window's budget.
    Health, readiness and metrics are exempt: probes and scrapes must never be refused."""
    limit_header = str(limiter.limit.requests).encode()

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or scope["path"] in EXEMPT_PATHS:
            await app(scope, receive, send)
            return
        client = scope.get("client")
        peer = client[0] if client else "unknown"
        forwarded = None
        if limiter.trusted:
            for name, value in scope["headers"]:
                if name == b"x-forwarded-for":
                    forwarded = value.decode("latin-1")
                    break
        admitted, _, reset = limiter.admit(limiter.client_address(peer, forwarded))
        if admitted:
            await app(scope, receive, send)
            return
        problem = Problem(
            429,
            "rate-limited",
            f"more than {limiter.limit.requests} requests in {limiter.limit.per_seconds} s from this "
            f"address; retry in {reset} s",
        )
        body = problem.body()
        start: HTTPResponseStartEvent = {
            "type": "http.response.start",
            "status": 429,
            "headers": [
                (b"content-type", PROBLEM_JSON.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(reset).encode()),
                (b"ratelimit-limit", limit_header),
                (b"ratelimit-remaining", b"0"),
                (b"ratelimit-reset", str(reset).encode()),
                (b"ratelimit-policy", f"{limiter.limit.requests};w={limiter.limit.per_seconds}".encode()),
            ],
        }
        await send(start)
        end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": False}
        await send(end)

    return middleware
