"""The compatibility window: what jotc-migrate records, and which databases `check` and `upgrade`
accept, decided from the database alone (an old build has no newer migration files)."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from alembic.script import ScriptDirectory
from conftest import Migrate

from jotc_migrations.cli import alembic_config, head_revision
from jotc_migrations.compat import SchemaState, problem

Connection = psycopg.Connection[tuple[object, ...]]
REVISIONS = Path(__file__).parent / "revisions"


def newer(scenario: str) -> dict[str, str]:
    """The environment of a release one migration ahead of this build: its extra revision."""
    return {"JOTC_MIGRATE_EXTRA_VERSIONS": str(REVISIONS / scenario)}


def records(db: Connection) -> list[tuple[object, ...]]:
    return db.execute(
        "SELECT revision, position, compatible_back_to FROM jotc_schema_compat ORDER BY position"
    ).fetchall()


def test_every_migration_declares_its_window() -> None:
    for script in ScriptDirectory.from_config(alembic_config()).walk_revisions():
        assert isinstance(getattr(script.module, "compatible_back_to", None), str), script.revision


def test_upgrade_records_each_revision_with_the_version(migrate: Migrate, db: Connection) -> None:
    assert migrate("upgrade").returncode == 0
    head = head_revision()
    script = ScriptDirectory.from_config(alembic_config()).get_revision(head)
    declared = script.module.compatible_back_to
    assert records(db)[-1] == (head, len(records(db)), declared)
    assert migrate("upgrade", env=newer("expand")).returncode == 0
    assert records(db)[-1] == ("t_expand", len(records(db)), head)
    down = migrate("downgrade", head, env=newer("expand"))
    assert down.returncode == 0, down.stderr
    assert records(db)[-1][0] == head


def test_a_database_migrated_before_the_record_existed_is_backfilled(
    migrate: Migrate, db: Connection
) -> None:
    assert migrate("upgrade").returncode == 0
    db.execute("DROP TABLE jotc_schema_compat")
    assert migrate("upgrade").returncode == 0
    assert [row[0] for row in records(db)][-1] == head_revision()


def test_check_accepts_a_newer_compatible_database_without_its_files(migrate: Migrate) -> None:
    assert migrate("upgrade", env=newer("expand")).returncode == 0
    result = migrate("check")  # this build: no t_expand file, only the record in the database
    assert result.returncode == 0, result.stderr
    assert "t_expand" in result.stderr
    assert "compatible" in result.stderr


def test_an_old_build_rerun_against_a_newer_compatible_database_does_nothing(
    migrate: Migrate,
) -> None:
    assert migrate("upgrade", env=newer("expand")).returncode == 0
    result = migrate("upgrade")
    assert result.returncode == 0, result.stderr
    assert "nothing to do" in result.stderr


def test_check_and_upgrade_refuse_an_incompatible_newer_database(migrate: Migrate) -> None:
    assert migrate("upgrade", env=newer("contract")).returncode == 0
    for command in ("check", "upgrade"):
        result = migrate(command)
        assert result.returncode == 1, result.stderr
        line = result.stderr.strip().splitlines()[-1]
        assert "t_contract" in line
        assert head_revision() in line
        assert "deploy a release" in line


def test_check_refuses_an_older_database(migrate: Migrate) -> None:
    assert migrate("upgrade").returncode == 0
    result = migrate("check", env=newer("expand"))  # a build that expects t_expand
    assert result.returncode == 1
    assert "older than t_expand" in result.stderr
    assert "jotc-migrate upgrade" in result.stderr


@pytest.mark.parametrize(
    ("state", "verdict"),
    [
        (SchemaState("0002", "0002"), None),
        (SchemaState("0002", None), "no JOTC schema yet"),
        (SchemaState("0002", "0001", 1, "0001", 1, None), "older than 0002"),
        (SchemaState("0002", "0003", 3, "0002", 2, 2), None),
        (SchemaState("0002", "0004", 4, "0002", 2, 2), None),
        (SchemaState("0002", "0004", 4, "0003", 3, 2), "compatible back to 0003 only"),
        (SchemaState("0002", "0003", None), "no compatibility record"),
        (SchemaState("0002", "0003", 3, "gone", None, 2), "compatible back to gone only"),
    ],
)
def test_the_rule(state: SchemaState, verdict: str | None) -> None:
    found = problem(state)
    assert (found is None) if verdict is None else (found is not None and verdict in found), found
