"""Fixtures: a freshly migrated database, the application in process (Litestar's test client) and
as the real server (jotc-api: Granian, 2 workers) on a free port, a PostgreSQL connection, and a
private Redis a test may stop. Helpers that are not fixtures are in support.py."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # imported where used, so the unit tier starts without the application's imports
    import httpx
    import psycopg
    from jotc_provision import RedisServer
    from support import ApiServer


@pytest.fixture(scope="session")
def tmp_root() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="jotc-api-tests-") as directory:
        yield Path(directory)


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """One migrated database for the session's tests (each test writes rows of its own users)."""
    from support import fresh_database

    with fresh_database() as url:
        yield url


@pytest.fixture(scope="session")
def client(database_url: str) -> Iterator[httpx.Client]:
    """The application in this process, through Litestar's test client, with the tests' settings."""
    from support import TEST_SETTINGS, in_process

    with in_process(database_url, **TEST_SETTINGS) as http:
        yield http


@pytest.fixture(scope="session")
def api(database_url: str, tmp_root: Path) -> Iterator[ApiServer]:
    """The real server: jotc-api under Granian with 2 workers."""
    from support import start_api

    server = start_api(database_url, tmp_root)
    yield server
    server.stop()


@pytest.fixture
def server_client(api: ApiServer) -> Iterator[httpx.Client]:
    """An HTTP client of the real server."""
    import httpx

    with httpx.Client(base_url=api.base_url, timeout=30) as http:
        yield http


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, on a free port, that it may kill and start again."""
    from jotc_provision import ProvisionError, RedisServer

    try:
        server = RedisServer(tmp_path / "redis")
    except ProvisionError as error:
        pytest.fail(str(error))
    server.start()
    yield server
    server.kill()
