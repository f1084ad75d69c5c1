"""Fixtures: a fresh, empty PostgreSQL database per test, one migrated database per module for the
constraint tests, and jotc-migrate bound to the test's database. Helpers that are not fixtures
are in support.py; provisioning is jotc_provision (scripts/lib)."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from jotc_provision import fresh_database
from support import JOTC_MIGRATE, Connection, Migrate, server_url


@pytest.fixture
def database_url() -> Iterator[str]:
    """A new empty database (a unique name: safe under pytest-xdist), dropped after the test."""
    with fresh_database(server_url()) as url:
        yield url


@pytest.fixture(scope="module")
def migrated_url() -> Iterator[str]:
    """One database at head for a module's constraint tests."""
    with fresh_database(server_url(), migrate_with=JOTC_MIGRATE) as url:
        yield url


@pytest.fixture
def migrated(migrated_url: str) -> Iterator[Connection]:
    """A connection to the migrated database; whatever the test writes is rolled back."""
    with psycopg.connect(migrated_url) as connection:
        yield connection
        connection.rollback()


@pytest.fixture
def migrate(database_url: str) -> Migrate:
    return Migrate(database_url)


@pytest.fixture
def db(database_url: str) -> Iterator[Connection]:
    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection
