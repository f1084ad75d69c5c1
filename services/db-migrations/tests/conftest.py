"""Fixtures: a fresh, empty PostgreSQL database per test, and a way to run jotc-migrate."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import URL, make_url

DEFAULT_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
JOTC_MIGRATE = str(Path(sys.executable).with_name("jotc-migrate"))


def server_url() -> URL:
    """The server scripts/test provisioned (DATABASE_URL), or the local default."""
    return make_url(os.environ.get("DATABASE_URL") or DEFAULT_SERVER_URL)


def libpq(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


@dataclass(frozen=True)
class Migrate:
    database_url: str

    def __call__(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [JOTC_MIGRATE, *args],
            env={**os.environ, "DATABASE_URL": self.database_url, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def popen(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [JOTC_MIGRATE, *args],
            env={**os.environ, "DATABASE_URL": self.database_url, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


@contextmanager
def fresh_database() -> Iterator[str]:
    server = server_url()
    name = f"jotc_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(libpq(server), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield libpq(server.set(database=name))
    finally:
        with psycopg.connect(libpq(server), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url() -> Iterator[str]:
    """A new empty database, dropped after the test."""
    with fresh_database() as url:
        yield url


@pytest.fixture(scope="module")
def migrated_url() -> Iterator[str]:
    """One database at head for a module's constraint tests."""
    with fresh_database() as url:
        result = Migrate(url)("upgrade")
        assert result.returncode == 0, result.stderr
        yield url


@pytest.fixture
def migrated(migrated_url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A connection to the migrated database; whatever the test writes is rolled back."""
    with psycopg.connect(migrated_url) as connection:
        yield connection
        connection.rollback()


@pytest.fixture
def migrate(database_url: str) -> Migrate:
    return Migrate(database_url)


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection
