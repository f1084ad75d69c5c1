"""The Redis link a worker shares between its Redis features, and its health.

Redis is optional and may fail at any moment; nothing may stop or stall /jumps
because of it. Every call has a short timeout; a failure is counted in
``jotc_redis_failures_total`` and logged once per episode (and once when Redis
is back), not once per request; the client reconnects by itself. Its connections are a bounded
pool, sized with the rest of the connection budget (JOTC_REDIS_MAX_CONNECTIONS). The client is
made here but connects on first use, so no connection exists before the app's
lifespan starts.
"""

from __future__ import annotations

import asyncio

import structlog
from prometheus_client import Counter
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError

from jotc_api.settings import DEFAULT

log = structlog.get_logger("jotc.redis")

REDIS_FAILURES = Counter("jotc_redis_failures", "Redis operations that failed or timed out", ["operation"])
REDIS_TIMEOUT_SECONDS = 0.25
REDIS_ERRORS = (RedisError, OSError, TimeoutError)


class RedisLink:
    """The Redis client and the episode bookkeeping shared by every Redis feature of a worker."""

    def __init__(self, url: str | None, max_connections: int = DEFAULT["redis_max_connections"]) -> None:
        # A bounded pool (JOTC_REDIS_MAX_CONNECTIONS per worker): a caller past the bound waits up
        # to the operation's timeout for a connection, then fails as if Redis were down.
        self.client: Redis | None = (
            Redis(
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
        except REDIS_ERRORS as exc:
            self.failed("ping", exc)
            return "degraded"
        self.succeeded()
        return "ok"

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose(close_connection_pool=True)
