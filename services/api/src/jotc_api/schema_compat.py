"""May this build serve the database's schema? The API's half of the compatibility window.

db-migrations records, for every applied revision, its position in the chain and the oldest
application revision it stays compatible with (``jotc_schema_compat``, written in the same
transaction as ``alembic_version``; see services/db-migrations/README.md). This build serves a
database at ``SCHEMA_REVISION``, or a newer one whose record says it is compatible back to
``SCHEMA_REVISION`` or earlier: the previous release keeps serving while the database moves one
release ahead, and a rolled-back release comes up ready. It refuses an older, unrecorded or
incompatible one. The decision uses only what the database says, never migration files.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from jotc_api.tables import SCHEMA_REVISION

PRESENT = text("SELECT to_regclass('alembic_version') IS NOT NULL, to_regclass('jotc_schema_compat') IS NOT NULL")
VERSION = text("SELECT max(version_num) FROM alembic_version")
# The database's revision and record, the record of what it is compatible back to, and the
# record of this build's revision (present only if the database ever reached it).
WINDOW = text(
    """
    SELECT v.version_num, cur.position, cur.compatible_back_to, back.position, own.position
    FROM alembic_version v
    LEFT JOIN jotc_schema_compat cur ON cur.revision = v.version_num
    LEFT JOIN jotc_schema_compat back ON back.revision = cur.compatible_back_to
    LEFT JOIN jotc_schema_compat own ON own.revision = :own
    """
)


@dataclass(frozen=True)
class Verdict:
    """Whether this build may serve the database, its revision, and one line on why."""

    serves: bool
    database_revision: str | None
    detail: str = ""


def judge(
    own: str,
    revision: str | None,
    position: int | None = None,
    back_to: str | None = None,
    back_to_position: int | None = None,
    own_position: int | None = None,
) -> Verdict:
    """The rule, pure: positions are the recorded places in the migration chain."""
    if revision == own:
        return Verdict(True, revision)
    if revision is None:
        return Verdict(False, None, f"database never migrated, this build expects {own}; run jotc-migrate upgrade")
    if position is None:
        return Verdict(
            False,
            revision,
            f"database is at revision {revision} with no compatibility record, this build expects {own}; "
            "migrate with this release's jotc-migrate, or deploy the release that matches the database",
        )
    if own_position is None or own_position > position:
        return Verdict(
            False, revision, f"database is at revision {revision}, older than {own}; run jotc-migrate upgrade"
        )
    if back_to_position is None or back_to_position > own_position:
        return Verdict(
            False,
            revision,
            f"database is at revision {revision}, compatible back to {back_to} only, and this build "
            f"expects {own}; deploy a release built for {back_to} or later",
        )
    return Verdict(True, revision, f"database is at newer revision {revision}, compatible back to {back_to}")


async def schema_verdict(connection: AsyncConnection, own: str = SCHEMA_REVISION) -> Verdict:
    """Read the database's revision and compatibility record (two short queries) and judge."""
    migrated, recorded = (await connection.execute(PRESENT)).one()
    if not migrated:
        return judge(own, None)
    if not recorded:
        return judge(own, await connection.scalar(VERSION))
    row = (await connection.execute(WINDOW, {"own": own})).first()
    return judge(own, *row) if row is not None else judge(own, None)
