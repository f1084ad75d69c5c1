"""The serving revision, and the guard that keeps a migration from stranding the pods on it.

The serving revision is the schema revision the running API pods' code was
built for. A rolling upgrade migrates first, while those pods still serve, so
every revision ``jotc-migrate upgrade`` applies must be compatible back to the
serving revision or earlier (``compatible_back_to``, ``compat.py``);
otherwise every running pod turns unready before its replacement exists. A
downgrade must not take the database below the serving revision either, nor
land on a revision that is not compatible back to it.

The running pods report what they serve: each API worker whose /readyz schema
check passes writes its build's revision and the time into the table
``jotc_schema_readers`` (one row per revision) about every 30 s while it is probed, so a row
seen within ``READERS_TTL_SECONDS`` (three heartbeats) belongs to a pod that
serves now. The serving revision is, first found:

1. the one the operator names (``--serving``), which overrides the pods;
2. the oldest live reader's revision (the lowest position in the chain): the
   pods of every release still running, however many upgrades, stalled
   rollouts or releases sharing the database put them there;
3. the database's own revision, when no pod reports (first install, scaled to
   zero, or pods of a build older than this guard).

``jotc-migrate`` creates the table (``ensure_readers_table``) where it creates
``jotc_schema_compat``; an API finding no table reports nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text

from jotc_migrations.compat import chain, declared_back_to

READERS_TABLE = "jotc_schema_readers"
# Three of the API's 30 s heartbeats: a row older than this has no running pod behind it.
READERS_TTL_SECONDS = 90

CREATE_READERS_TABLE = text(
    """
    CREATE TABLE IF NOT EXISTS jotc_schema_readers (
        revision text PRIMARY KEY,
        seen_at timestamptz NOT NULL
    )
    """
)
READERS = text(
    """
    SELECT revision, greatest(extract(epoch FROM now() - seen_at), 0)::float8
    FROM jotc_schema_readers ORDER BY seen_at DESC, revision
    """
)


def known(revisions: Any) -> set[str]:
    """Every revision of a chain (Alembic's revision map)."""
    return {script.revision for script in revisions.iterate_revisions("heads", "base")}


def ensure_readers_table(connection: Connection) -> None:
    """Create the table the API pods report their revision in, if missing. The caller commits."""
    connection.execute(CREATE_READERS_TABLE)


@dataclass(frozen=True)
class Reader:
    """A revision the API pods reported serving, ``age_seconds`` after its last report."""

    revision: str
    age_seconds: float

    def __str__(self) -> str:
        return f"{self.revision} seen {self.age_seconds:.0f} s ago"


def readers(connection: Connection) -> list[Reader]:
    """Every revision the API pods ever reported, most recently seen first; none when the table
    does not exist (a database no jotc-migrate of this kind has migrated)."""
    present = connection.execute(
        text("SELECT to_regclass(:t) IS NOT NULL"), {"t": READERS_TABLE}
    ).scalar_one()
    if not present:
        return []
    return [Reader(str(row[0]), float(row[1])) for row in connection.execute(READERS)]


@dataclass(frozen=True)
class Serving:
    """The serving revision, where it came from (for messages), and, when the operator named it,
    the one warning line saying it overrides what the pods report."""

    revision: str
    source: str
    reported: bool = False  # True when the running pods reported it
    warning: str | None = None


def serving_revision(
    revisions: Any,
    named: str | None,
    named_source: str,
    reported: Sequence[Reader],
    database_revision: str | None,
) -> Serving | None:
    """The serving revision (see the module's docstring); None when nothing serves: no revision
    named, no live reader, no schema. A live reader's revision that ``revisions`` lacks (a newer
    build serves) is returned as it is: the guard refuses a revision it cannot place."""
    live = [reader for reader in reported if reader.age_seconds <= READERS_TTL_SECONDS]
    if named:
        seen = ", ".join(map(str, live)) or f"none in the last {READERS_TTL_SECONDS} s"
        return Serving(
            named,
            named_source,
            warning=(
                f"serving revision {named} from {named_source} overrides what running pods "
                f"report ({seen}); unset it once this run is done, since helm upgrade "
                "--reuse-values keeps it (migrations.servingRevision) for every later upgrade"
            ),
        )
    if live:
        chained = known(revisions)
        unknown = [reader for reader in live if reader.revision not in chained]
        oldest = unknown[0] if unknown else min(live, key=lambda r: position(revisions, r.revision))
        return Serving(
            oldest.revision,
            f"reported by running pods, seen {oldest.age_seconds:.0f} s ago",
            reported=True,
        )
    if database_revision is not None:
        return Serving(database_revision, "the database's revision")
    return None


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
