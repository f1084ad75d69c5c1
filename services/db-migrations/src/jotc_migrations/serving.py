"""The serving revision, and the guard that keeps a migration from stranding the release on it.

The serving revision is the schema revision the running release's code was
built for. A rolling upgrade migrates first, while that release still serves,
so every revision ``jotc-migrate upgrade`` applies must be compatible back to
the serving revision or earlier (``compatible_back_to``, ``compat.py``);
otherwise every running pod turns unready before its replacement exists. A
downgrade must not take the database below the serving revision either, nor
land on a revision that is not compatible back to it.

The database records the serving revision in the one-row table
``jotc_schema_serving``: ``upgrade`` records its target once it has reached it
(the new release's pods are about to replace the old ones), and
``record-serving`` records the build's own head (the chart's pre-rollback hook,
with the restored release's image). Without a record, the serving revision is
the database's own revision: what a release serves after a normal upgrade.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text

from jotc_migrations.compat import chain, declared_back_to

TABLE = "jotc_schema_serving"

CREATE_TABLE = text(
    """
    CREATE TABLE IF NOT EXISTS jotc_schema_serving (
        one_row boolean PRIMARY KEY DEFAULT true CHECK (one_row),
        revision text NOT NULL,
        recorded_at timestamptz NOT NULL DEFAULT now()
    )
    """
)
RECORD = text(
    """
    INSERT INTO jotc_schema_serving (revision) VALUES (:revision)
    ON CONFLICT (one_row) DO UPDATE SET revision = EXCLUDED.revision, recorded_at = now()
    """
)


def recorded(connection: Connection) -> str | None:
    """The serving revision the database records, or None when it records none."""
    present = connection.execute(
        text("SELECT to_regclass(:t) IS NOT NULL"), {"t": TABLE}
    ).scalar_one()
    if not present:
        return None
    found = connection.execute(text("SELECT revision FROM jotc_schema_serving")).scalar()
    return None if found is None else str(found)


def record(connection: Connection, revision: str) -> None:
    """Record ``revision`` as the serving revision, creating the table if missing. The caller
    commits."""
    connection.execute(CREATE_TABLE)
    connection.execute(RECORD, {"revision": revision})


@dataclass(frozen=True)
class Stranding:
    """A revision the database would pass through whose window leaves the serving revision out:
    ``revision`` is compatible back to ``back_to`` only, newer than the serving revision."""

    revision: str
    back_to: str


def position(revisions: Any, revision: str | None) -> int:
    """A revision's place in the chain: 1 for the first migration, 0 for no schema at all."""
    if revision is None:
        return 0
    return len(chain(revisions, revisions.get_revision(revision)))


def first_stranding(revisions: Any, serving: str, passed: Iterable[str]) -> Stranding | None:
    """The first of ``passed`` (revisions the database would be at, in the order it reaches them)
    that is compatible back only to a revision newer than ``serving``; None when code built for
    ``serving`` keeps working through all of them. Every revision must be in ``revisions``."""
    serving_position = position(revisions, serving)
    for revision in passed:
        back_to = declared_back_to(revisions, revisions.get_revision(revision))
        if position(revisions, back_to) > serving_position:
            return Stranding(revision, back_to)
    return None
