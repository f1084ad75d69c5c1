"""The compatibility window through jotc-migrate against real PostgreSQL: what it records, and
which databases `check` and `upgrade` accept, decided from the database alone (an old build has
no newer migration files). The rule itself is unit/test_compat_rule.py."""

from __future__ import annotations

from alembic.script import ScriptDirectory
from support import Connection, Migrate, extra

from jotc_migrations.cli import alembic_config, head_revision


def records(db: Connection) -> list[tuple[object, ...]]:
    return db.execute(
        "SELECT revision, position, compatible_back_to FROM jotc_schema_compat ORDER BY position"
    ).fetchall()


def test_upgrade_records_each_revision_with_the_version(migrate: Migrate, db: Connection) -> None:
    migrate.ok("upgrade")
    head = head_revision()
    script = ScriptDirectory.from_config(alembic_config()).get_revision(head)
    assert script is not None, f"no script for this build's head {head}"
    declared = script.module.compatible_back_to
    found = records(db)
    assert found[-1] == (head, len(found), declared), f"the head's record: {found}"
    migrate.ok("upgrade", env=extra("expand"))
    found = records(db)
    assert found[-1] == ("t_expand", len(found), head), f"t_expand's record: {found}"
    migrate.ok("downgrade", head, "--serving", head, env=extra("expand"))
    found = records(db)
    assert found[-1][0] == head, f"after downgrading to {head}, the newest record: {found}"


def test_a_database_migrated_before_the_record_existed_is_backfilled(
    migrate: Migrate, db: Connection
) -> None:
    migrate.ok("upgrade")
    db.execute("DROP TABLE jotc_schema_compat")
    # Without the record, a build still serves the database at its own revision.
    migrate.ok("check")
    migrate.ok("upgrade")
    found = [row[0] for row in records(db)]
    assert found[-1] == head_revision(), f"backfilled records: {found}"


def test_check_accepts_a_newer_compatible_database_without_its_files(migrate: Migrate) -> None:
    migrate.ok("upgrade", env=extra("expand"))
    result = migrate.ok("check")  # this build: no t_expand file, only the record in the database
    assert "t_expand" in result.stderr, result.stderr
    assert "compatible" in result.stderr, result.stderr


def test_an_old_build_rerun_against_a_newer_compatible_database_does_nothing(
    migrate: Migrate,
) -> None:
    migrate.ok("upgrade", env=extra("expand"))
    result = migrate.ok("upgrade")
    assert "nothing to do" in result.stderr, result.stderr


def test_check_and_upgrade_refuse_an_incompatible_newer_database(migrate: Migrate) -> None:
    migrate.ok("upgrade", env=extra("contract"))
    for command in ("check", "upgrade"):
        result = migrate(command)
        assert result.returncode == 1, f"{command}: exit {result.returncode}: {result.stderr}"
        line = result.stderr.strip().splitlines()[-1]
        assert "t_contract" in line, f"{command}: {line}"
        assert head_revision() in line, f"{command}: {line}"
        assert "deploy a release" in line, f"{command}: {line}"


def test_check_refuses_an_older_database(migrate: Migrate) -> None:
    migrate.ok("upgrade")
    result = migrate("check", env=extra("expand"))  # a build that expects t_expand
    assert result.returncode == 1, f"exit {result.returncode}, expected 1: {result.stderr}"
    assert "older than t_expand" in result.stderr, result.stderr
    assert "jotc-migrate upgrade" in result.stderr, result.stderr
