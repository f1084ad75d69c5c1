"""The Redis link built from the settings, with and without sentinels: which pool, which bound,
which timeouts, what REDIS_URL gives the master and the sentinels. No Redis: nothing is asked of a
server, except sentinels on ports nothing listens on, refused at once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from jotc_provision import free_port
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import Connection
from redis.asyncio.sentinel import SentinelManagedConnection, SentinelManagedSSLConnection
from redis.exceptions import ConnectionError as RedisConnectionError

from jotc_api.redis_link import REDIS_ERRORS, REDIS_TIMEOUT_SECONDS, BlockingSentinelPool, RedisLink
from jotc_api.settings import load_settings

SENTINELS = "sentinel-0:26379,sentinel-1:26379,[::1]:26380"


def link_of(**env: str) -> RedisLink:
    return RedisLink.from_settings(load_settings({"DATABASE_URL": "postgresql://u@db/jotc", **env}))


def master_pool(link: RedisLink) -> BlockingSentinelPool:
    assert link.client is not None
    pool = link.client.connection_pool
    assert isinstance(pool, BlockingSentinelPool)
    return pool


def sentinel_options(link: RedisLink) -> list[dict[str, Any]]:
    """What each sentinel's own client connects with: its address, its connection class, the rest."""
    assert link.sentinel is not None
    pools = [client.connection_pool for client in link.sentinel.sentinels]
    return [{**pool.connection_kwargs, "connection_class": pool.connection_class} for pool in pools]


def test_without_sentinels_the_url_names_the_server_and_the_pool_is_bounded() -> None:
    assert link_of().client is None
    link = link_of(REDIS_URL="redis://cache:6380/2", JOTC_REDIS_MAX_CONNECTIONS="7")
    assert link.sentinel is None
    assert link.client is not None
    pool = link.client.connection_pool
    assert type(pool) is BlockingConnectionPool
    assert (pool.max_connections, pool.timeout) == (7, REDIS_TIMEOUT_SECONDS)
    assert (pool.connection_kwargs["host"], pool.connection_kwargs["port"], pool.connection_kwargs["db"]) == (
        "cache",
        6380,
        2,
    )


def test_sentinels_alone_mean_no_password_database_0_and_the_default_service() -> None:
    link = link_of(REDIS_SENTINELS=SENTINELS, JOTC_REDIS_MAX_CONNECTIONS="9")
    pool = master_pool(link)
    assert pool.service_name == "mymaster"
    assert (pool.max_connections, pool.timeout) == (9, REDIS_TIMEOUT_SECONDS)
    assert pool.connection_class is SentinelManagedConnection
    kwargs = pool.connection_kwargs
    assert "password" not in kwargs
    assert kwargs.get("db", 0) == 0
    assert "host" not in kwargs
    assert "port" not in kwargs
    assert [(o["host"], o["port"]) for o in sentinel_options(link)] == [
        ("sentinel-0", 26379),
        ("sentinel-1", 26379),
        ("::1", 26380),
    ]
    assert all(o.get("password") is None for o in sentinel_options(link))


def test_with_sentinels_the_url_gives_the_password_database_and_tls_never_the_address() -> None:
    link = link_of(
        REDIS_SENTINELS=SENTINELS,
        REDIS_SENTINEL_SERVICE="jotc-redis",
        REDIS_URL="rediss://:s3cret@ignored:1234/3?ssl_cert_reqs=none",  # pragma: allowlist secret
    )
    pool = master_pool(link)
    assert pool.service_name == "jotc-redis"
    assert pool.connection_class is SentinelManagedSSLConnection
    kwargs = pool.connection_kwargs
    assert (kwargs["password"], kwargs["db"], kwargs["ssl_cert_reqs"]) == ("s3cret", 3, "none")
    assert "username" not in kwargs  # the master is asked `AUTH <password>`, as without sentinels
    assert "host" not in kwargs
    assert "port" not in kwargs
    for options in sentinel_options(link):
        # A sentinel with no password of its own takes `AUTH default <password>`, and one that shares
        # the servers' password needs it; the one-word form is refused by the first.
        assert (options["username"], options["password"]) == ("default", "s3cret")
        assert options["connection_class"].__name__ == "SSLConnection"
        assert options["ssl_cert_reqs"] == "none"
        assert options["db"] == 0  # a sentinel has no databases; the URL's is the master's


def test_a_user_in_the_url_is_the_user_for_the_master_and_the_sentinels() -> None:
    link = link_of(REDIS_SENTINELS=SENTINELS, REDIS_URL="redis://jotc:pw@x/0")  # pragma: allowlist secret
    assert (master_pool(link).connection_kwargs["username"], master_pool(link).connection_kwargs["password"]) == (
        "jotc",
        "pw",
    )
    assert {(o["username"], o["password"]) for o in sentinel_options(link)} == {("jotc", "pw")}


def test_every_connection_has_the_short_timeouts_and_no_retry() -> None:
    """redis-py's own default for a sentinel's client is ten retries with a growing pause."""
    link = link_of(REDIS_SENTINELS=SENTINELS)
    pool = master_pool(link)
    for options in [pool.connection_kwargs, *sentinel_options(link)]:
        assert options["socket_timeout"] == options["socket_connect_timeout"] == REDIS_TIMEOUT_SECONDS
        assert options["retry"].get_retries() == 0


async def test_unreachable_sentinels_fail_the_call_at_once_as_redis_down(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every sentinel refused: the call fails with an error every Redis feature handles, after one
    try of each sentinel (redis-py's defaults retried each ten times, 10 s over three)."""
    addresses = ",".join(f"127.0.0.1:{free_port()}" for _ in range(3))
    link = link_of(REDIS_SENTINELS=addresses)
    assert link.client is not None
    tries: list[object] = []
    open_connection = asyncio.open_connection

    async def counted(*args: Any, **kwargs: Any) -> Any:
        tries.append(args[:2] or kwargs.get("host"))
        return await open_connection(*args, **kwargs)

    monkeypatch.setattr(asyncio, "open_connection", counted)
    with pytest.raises(REDIS_ERRORS) as failure:
        await link.client.set("jotc:probe", "1")
    await link.close()
    assert "No master found for 'mymaster'" in str(failure.value)
    assert len(tries) == 3, f"one try of each sentinel, not {len(tries)}: {tries}"


class IdleConnection(Connection):
    """A connection that is always connected and never asked anything: the pool's bound alone."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.pop("connection_pool", None)
        super().__init__(**kwargs)

    async def connect(self) -> None:
        return None

    async def can_read(self, timeout: float = 0) -> bool:
        return False

    async def disconnect(
        self, nowait: bool = False, error: Exception | None = None, failure_count: int | None = None
    ) -> None:
        return None


async def test_a_caller_past_the_bound_waits_the_timeout_then_fails_as_redis_down() -> None:
    """SentinelConnectionPool alone refuses at once past its bound; this one waits for a connection
    given back, and only then refuses, with ConnectionError (a RedisError every feature handles)."""
    link = link_of(REDIS_SENTINELS=SENTINELS, JOTC_REDIS_MAX_CONNECTIONS="2")
    pool = master_pool(link)
    pool.connection_class = IdleConnection
    pool.timeout = 0.05  # the wait under test, shortened
    held = [await pool.get_connection() for _ in range(2)]
    with pytest.raises(RedisConnectionError):
        await pool.get_connection()
    waiting = asyncio.create_task(pool.get_connection())
    await pool.release(held.pop())
    assert isinstance(await waiting, IdleConnection)  # given the connection released meanwhile
    assert isinstance(link.client, Redis)
