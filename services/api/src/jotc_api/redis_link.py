"""The Redis link a worker shares between its Redis features, and its health.

Redis is optional and may fail at any moment; nothing may stop or stall /jumps
because of it. Every call has a short timeout; a failure is counted in
``jotc_redis_failures_total`` and logged once per episode (and once when Redis
is back), not once per request; the client reconnects by itself. Its connections are a bounded
pool, sized with the rest of the connection budget (JOTC_REDIS_MAX_CONNECTIONS). The client is
made here but connects on first use, so no connection exists before the app's
lifespan starts.

With REDIS_SENTINELS the master is not an address but what the sentinels name
(REDIS_SENTINEL_SERVICE): each new connection asks them, and a connection that
fails, or that a demoted master answers READONLY, is dropped, so the next one
finds the master promoted since, without a restart. Between the master's loss
and its replacement's promotion every call fails as when Redis is down.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from prometheus_client import Counter
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from jotc_api.settings import DEFAULT, Settings

log = structlog.get_logger("jotc.redis")

REDIS_FAILURES = Counter("jotc_redis_failures", "Redis operations that failed or timed out", ["operation"])
REDIS_TIMEOUT_SECONDS = 0.25
REDIS_ERRORS = (RedisError, OSError, TimeoutError)
# What REDIS_URL gives the master's connections when sentinels name the master (and TLS, below).
URL_OPTIONS_WITH_SENTINELS = ("username", "password", "db")


class BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """The master's connections, found through the sentinels, bounded as BlockingConnectionPool
    bounds them: a caller past ``max_connections`` waits up to ``timeout`` for one, then gets
    ConnectionError. (SentinelConnectionPool alone refuses at once past its bound.)"""


class RedisLink:
    """The Redis client and the episode bookkeeping shared by every Redis feature of a worker."""

    def __init__(
        self,
        url: str | None,
        max_connections: int = DEFAULT["redis_max_connections"],
        *,
        sentinels: tuple[tuple[str, int], ...] = (),
        service: str = DEFAULT["redis_sentinel_service"],
    ) -> None:
        # A bounded pool (JOTC_REDIS_MAX_CONNECTIONS per worker): a caller past the bound waits up
        # to the operation's timeout for a connection, then fails as if Redis were down.
        self.sentinel: Sentinel | None = None
        self.client: Redis | None = None
        if sentinels:
            self.sentinel, self.client = sentinel_client(url, max_connections, sentinels, service)
        elif url:
            self.client = Redis(
                connection_pool=BlockingConnectionPool.from_url(
                    url,
                    max_connections=max_connections,
                    timeout=REDIS_TIMEOUT_SECONDS,
                    socket_timeout=REDIS_TIMEOUT_SECONDS,
                    socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
                    retry_on_timeout=False,
                    health_check_interval=30,
                )
            )
        self.healthy = self.client is not None

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisLink:
        """The link REDIS_URL, or REDIS_SENTINELS and REDIS_SENTINEL_SERVICE, describe."""
        return cls(
            settings.redis_url,
            settings.redis_max_connections,
            sentinels=settings.redis_sentinels,
            service=settings.redis_sentinel_service,
        )

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
        except REDIS_ERRORS as exc:
            self.failed("ping", exc)
            return "degraded"
        self.succeeded()
        return "ok"

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose(close_connection_pool=True)
        if self.sentinel is not None:
            await self.sentinel.aclose()


def sentinel_client(
    url: str | None, max_connections: int, sentinels: tuple[tuple[str, int], ...], service: str
) -> tuple[Sentinel, Redis]:
    """The sentinels, and a client of the master they name as ``service``.

    REDIS_URL, when given, says only who to be and how: its user, password and database, and TLS
    (``rediss://`` and its ``ssl_*`` options); its host, port or socket path are not used. Unset:
    no password, database 0, no TLS. The sentinels are asked over the same TLS, and with the same
    password as user ``default`` unless the URL names a user: a sentinel without a password accepts
    that (only the one-word ``AUTH <password>`` is refused there), one that shares the servers'
    password needs it.

    Every connection, to a sentinel or to the master, has the short timeouts and no retry: redis-py
    otherwise retries a sentinel that does not answer ten times with a growing pause, for seconds."""
    options: dict[str, Any] = dict(parse_url(url)) if url else {}
    tls = {name: value for name, value in options.items() if name.startswith("ssl_")}
    if options.get("connection_class") is SSLConnection:
        tls["ssl"] = True
    identity = {name: options[name] for name in URL_OPTIONS_WITH_SENTINELS if name in options}
    quick: dict[str, Any] = {
        "socket_timeout": REDIS_TIMEOUT_SECONDS,
        "socket_connect_timeout": REDIS_TIMEOUT_SECONDS,
        "retry": Retry(NoBackoff(), 0),
    }
    asked_as = {}
    if identity.get("password"):
        asked_as = {"username": identity.get("username") or "default", "password": identity["password"]}
    sentinel = Sentinel(  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
        list(sentinels), sentinel_kwargs={**quick, **tls, **asked_as}, **quick, **tls, **identity
    )
    master = sentinel.master_for(
        service,
        connection_pool_class=BlockingSentinelPool,
        max_connections=max_connections,
        timeout=REDIS_TIMEOUT_SECONDS,  # the wait for a free connection, past the bound
        health_check_interval=30,
    )
    return sentinel, master
