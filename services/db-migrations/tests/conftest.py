"""Fixtures: a fresh, empty PostgreSQL database per test, one migrated database per module for the
constraint tests, and jotc-migrate bound to the test's database. Helpers that are not fixtures
are in support.py; provisioning is jotc_provision (scripts/lib)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from alembic.script import ScriptDirectory
from jotc_provision import fresh_database
from support import JOTC_MIGRATE, Connection, Migrate, extra, server_url

from jotc_migrations.cli import alembic_config


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


@pytest.fixture
def three_releases(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The revision map of a build whose head is t_note_required: the test-only chain of three
    releases, the product head, t_expand and t_note_required (tests/revisions/README.md)."""
    for name, value in extra("expand", "contract_after_expand").items():
        monkeypatch.setenv(name, value)
    return ScriptDirectory.from_config(alembic_config()).revision_map
