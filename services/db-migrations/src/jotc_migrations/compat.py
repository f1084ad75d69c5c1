"""The schema compatibility window: which application revisions a database still serves.

Every migration module declares ``compatible_back_to``: the oldest application
schema revision whose code keeps working once this migration has run
(expand/contract; see the README). Each applied revision is recorded in
``jotc_schema_compat`` with its position in the chain, in the same transaction
that moves ``alembic_version``. A reader (``jotc-migrate check``, the API's
/readyz) then decides from the database alone, without the newer migration
files, whether it may serve:

- the database is at its own revision: yes;
- the database is newer and its revision is compatible back to the reader's or
  earlier: yes;
- older, unknown or incompatible: no, with one line naming both revisions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text

from jotc_migrations.errors import EXIT_MIGRATION_FAILED, MigrateError

TABLE = "jotc_schema_compat"

CREATE_TABLE = text(
    """
    CREATE TABLE IF NOT EXISTS jotc_schema_compat (
        revision text PRIMARY KEY,
        position integer NOT NULL,
        compatible_back_to text NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now()
    )
    """
)
RECORD = text(
    """
    INSERT INTO jotc_schema_compat (revision, position, compatible_back_to)
    VALUES (:revision, :position, :back_to)
    ON CONFLICT (revision) DO UPDATE
    SET position = EXCLUDED.position, compatible_back_to = EXCLUDED.compatible_back_to
    """
)
FORGET = text("DELETE FROM jotc_schema_compat WHERE revision = :revision")

# One round trip: the database's revision, its record, the record of what it is compatible back
# to, and the record of the reader's own revision (present only if the database ever reached it).
STATE = text(
    """
    SELECT v.version_num, cur.position, cur.compatible_back_to, back.position, own.position
    FROM alembic_version v
    LEFT JOIN jotc_schema_compat cur ON cur.revision = v.version_num
    LEFT JOIN jotc_schema_compat back ON back.revision = cur.compatible_back_to
    LEFT JOIN jotc_schema_compat own ON own.revision = :own
    """
)


@dataclass(frozen=True)
class SchemaState:
    """What the database says about itself, relative to a reader expecting revision ``own``."""

    own: str
    revision: str | None
    position: int | None = None
    back_to: str | None = None
    back_to_position: int | None = None
    own_position: int | None = None


def problem(state: SchemaState) -> str | None:
    """None when a reader built for ``state.own`` may serve this database, else why not."""
    own, revision = state.own, state.revision
    if revision == own:
        return None
    if revision is None:
        return f"has no JOTC schema yet (this build expects {own}); run jotc-migrate upgrade"
    if state.position is None:
        return (
            f"is at revision {revision}, which has no compatibility record (this build expects "
            f"{own}); upgrade it with this release's jotc-migrate, or deploy {revision}'s release"
        )
    if state.own_position is None or state.own_position > state.position:
        return (
            f"is at revision {revision}, older than {own} which this build expects; "
            "run jotc-migrate upgrade"
        )
    if state.back_to_position is None or state.back_to_position > state.own_position:
        return (
            f"is at revision {revision}, compatible back to {state.back_to} only, and this build "
            f"expects {own}; deploy a release built for {state.back_to} or later"
        )
    return None


def read_state(connection: Connection, own: str) -> SchemaState:
    """The database's schema state as seen by a reader built for ``own``."""
    present = connection.execute(
        text("SELECT to_regclass('alembic_version') IS NOT NULL, to_regclass(:t) IS NOT NULL"),
        {"t": TABLE},
    ).one()
    if not present[0]:
        return SchemaState(own, None)
    if not present[1]:
        row = connection.execute(text("SELECT max(version_num) FROM alembic_version")).one()
        return SchemaState(own, row[0])
    found = connection.execute(STATE, {"own": own}).first()
    if found is None:
        return SchemaState(own, None)
    return SchemaState(own, *found)


def chain(revisions: Any, script: Any) -> list[str]:
    """A revision and its ancestors, newest first (one head, no merges: checked at build time)."""
    found = []
    while script is not None:
        found.append(script.revision)
        script = revisions.get_revision(script.down_revision) if script.down_revision else None
    return found


def declared_back_to(revisions: Any, script: Any) -> str:
    """The module's ``compatible_back_to``; a migration that declares none is compatible only
    with its own revision (the safe default: old pods turn unready rather than misbehave)."""
    back_to = getattr(script.module, "compatible_back_to", script.revision)
    if back_to not in chain(revisions, script):
        raise MigrateError(
            f"migration {script.revision} declares compatible_back_to = {back_to!r}, "
            "which is not the revision itself or one of its ancestors",
            EXIT_MIGRATION_FAILED,
        )
    return str(back_to)


def record(connection: Connection, revisions: Any, script: Any) -> None:
    """Record ``script`` as applied (its position and compatibility)."""
    connection.execute(
        RECORD,
        {
            "revision": script.revision,
            "position": len(chain(revisions, script)),
            "back_to": declared_back_to(revisions, script),
        },
    )


def ensure_table(connection: Connection, current: str | None, revision_map: Any) -> None:
    """Create the bookkeeping table and record the current revision's chain, for databases
    migrated before the table existed. Idempotent; the caller commits."""
    connection.execute(CREATE_TABLE)
    if current is None:
        return
    script = revision_map.get_revision(current)
    while script is not None:
        record(connection, revision_map, script)
        script = revision_map.get_revision(script.down_revision) if script.down_revision else None


def on_version_apply(ctx: Any, step: Any, heads: Any, run_args: Any) -> None:
    """Alembic callback, inside the migration's own transaction: record or forget a revision."""
    connection = ctx.connection
    if step.is_upgrade:
        record(connection, step.revision_map, step.up_revision)
    else:
        for revision in step.up_revision_ids:
            connection.execute(FORGET, {"revision": revision})
