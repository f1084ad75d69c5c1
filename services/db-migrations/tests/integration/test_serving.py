"""The release guard through the real jotc-migrate against real PostgreSQL: an upgrade that would
strand the serving release is refused in one line and changes nothing, unless breaking is asked
for; the serving revision comes from --serving, the database's record or its revision;
record-serving (the chart's pre-rollback hook) and downgrade obey the same rule.

The releases are a test-only chain (tests/revisions/README.md): the product head is release N-2,
t_expand (an expand step, compatible back to N-2) is N-1, and t_note_required (a contract step,
compatible back to t_expand only) is N. The rule itself is unit/test_serving_rule.py."""

from __future__ import annotations

from alembic.script import ScriptDirectory
from support import Connection, Migrate, extra, revision

from jotc_migrations.cli import alembic_config, head_revision

# A build whose head is release N: the whole test-only chain.
RELEASE_N = extra("expand", "contract_after_expand")


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"not one line: {stderr}"
    return lines[0]


def serving(db: Connection) -> str:
    row = db.execute("SELECT revision FROM jotc_schema_serving").fetchone()
    assert row is not None, "jotc_schema_serving records nothing"
    return str(row[0])


def columns(db: Connection) -> set[str]:
    rows = db.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'jump_requests'"
    ).fetchall()
    return {str(row[0]) for row in rows}


def newest_record(db: Connection) -> object:
    row = db.execute("SELECT revision FROM jotc_schema_compat ORDER BY position DESC").fetchone()
    return row[0] if row else None


def test_skipping_a_release_is_refused_and_the_serving_release_keeps_serving(
    migrate: Migrate, db: Connection
) -> None:
    head = head_revision()
    migrate.ok("upgrade")  # release N-2, which keeps serving
    before = columns(db)

    refused = migrate("upgrade", "--serving", head, env=RELEASE_N)

    assert refused.returncode == 1, f"exit {refused.returncode}, expected 1: {refused.stderr}"
    line = one_line(refused.stderr)
    assert line.startswith("jotc-migrate: refusing to upgrade to t_note_required:"), line
    assert f"serves {head} (--serving" in line, line
    assert "t_note_required is compatible back to t_expand only" in line, line
    assert "deploy a release built for t_expand first" in line, line
    assert "--allow-breaking (JOTC_MIGRATE_ALLOW_BREAKING=true)" in line, line
    assert revision(db) == [head], "the refused upgrade moved alembic_version"
    assert columns(db) == before, "the refused upgrade changed jump_requests (t_expand ran)"
    assert newest_record(db) == head, "the refused upgrade recorded a revision"
    assert serving(db) == head, "the refused upgrade changed the serving revision"
    # The serving release's readiness rule (compat.problem, as /readyz and its init container
    # decide it): the database is still one it serves.
    kept = migrate.ok("check")
    assert f"can be served by this build ({head})" in kept.stderr, kept.stderr

    crossed = migrate.ok("upgrade", "--serving", head, "--allow-breaking", env=RELEASE_N)

    warnings = [line for line in crossed.stderr.splitlines() if "warning:" in line]
    assert len(warnings) == 1, f"expected one warning line: {crossed.stderr}"
    said = "upgrade to t_note_required goes ahead (--allow-breaking) although"
    assert said in warnings[0], warnings
    assert f"serves {head}" in warnings[0], warnings
    assert revision(db) == ["t_note_required"], "--allow-breaking did not reach the target"
    assert serving(db) == "t_note_required", "the target was not recorded as serving"
    stranded = migrate("check")
    assert stranded.returncode == 1, f"{head} still serves after the contract: {stranded.stderr}"


def test_two_releases_cross_a_breaking_change_without_being_told(
    migrate: Migrate, db: Connection
) -> None:
    migrate.ok("upgrade")
    assert serving(db) == head_revision(), "an upgrade records its target as serving"
    migrate.ok("upgrade", env=extra("expand"))  # N-1: expand, its pods replace N-2's
    assert serving(db) == "t_expand", "an upgrade records its target as serving"
    crossed = migrate.ok("upgrade", env=RELEASE_N)  # N: contract, while N-1 serves
    assert "upgraded from t_expand to t_note_required" in crossed.stderr, crossed.stderr
    assert "warning" not in crossed.stderr, crossed.stderr
    assert serving(db) == "t_note_required", "an upgrade records its target as serving"
    # Rolled back to N-1 (its pre-rollback hook), then the contract undone by N's downgrade.
    migrate.ok("record-serving", env=extra("expand"))
    assert serving(db) == "t_expand", "the rolled-back release was not recorded as serving"
    migrate.ok("downgrade", "t_expand", env=RELEASE_N)
    assert revision(db) == ["t_expand"], "the downgrade to the serving revision did not happen"


def test_the_recorded_serving_revision_guards_without_serving(
    migrate: Migrate, db: Connection
) -> None:
    migrate.ok("upgrade")
    refused = migrate("upgrade", env=RELEASE_N)
    assert refused.returncode == 1, f"exit {refused.returncode}: {refused.stderr}"
    assert f"serves {head_revision()} (recorded in jotc_schema_serving)" in one_line(refused.stderr)
    assert revision(db) == [head_revision()], "the refused upgrade moved alembic_version"


def test_without_a_record_the_databases_revision_is_the_serving_one(
    migrate: Migrate, db: Connection
) -> None:
    migrate.ok("upgrade")
    db.execute("DROP TABLE jotc_schema_serving")  # a database upgraded before the record existed
    refused = migrate("upgrade", env=RELEASE_N)
    assert refused.returncode == 1, f"exit {refused.returncode}: {refused.stderr}"
    line = one_line(refused.stderr)
    assert f"serves {head_revision()} (the database's revision)" in line, line
    migrate.ok("upgrade", env=extra("expand"))
    assert serving(db) == "t_expand", "the table was not created again with the target"


def test_the_chart_settings_name_the_serving_revision_and_allow_breaking(
    migrate: Migrate, db: Connection
) -> None:
    migrate.ok("upgrade")
    settings = {"JOTC_MIGRATE_SERVING_REVISION": head_revision()}
    refused = migrate("upgrade", env={**RELEASE_N, **settings})
    line = one_line(refused.stderr)
    assert "(--serving or JOTC_MIGRATE_SERVING_REVISION)" in line, line
    bad = migrate("upgrade", env={**RELEASE_N, "JOTC_MIGRATE_ALLOW_BREAKING": "maybe"})
    assert bad.returncode == 2, f"exit {bad.returncode}, expected 2: {bad.stderr}"
    assert "JOTC_MIGRATE_ALLOW_BREAKING is 'maybe'" in one_line(bad.stderr), bad.stderr
    assert revision(db) == [head_revision()], "a refused upgrade moved alembic_version"
    migrate.ok("upgrade", env={**RELEASE_N, **settings, "JOTC_MIGRATE_ALLOW_BREAKING": "yes"})
    assert revision(db) == ["t_note_required"], "JOTC_MIGRATE_ALLOW_BREAKING=yes did not proceed"


def test_a_serving_revision_the_build_does_not_know_is_refused(
    migrate: Migrate, db: Connection
) -> None:
    migrate.ok("upgrade")
    refused = migrate("upgrade", "--serving", "0099", env=extra("expand"))
    assert refused.returncode == 1, f"exit {refused.returncode}: {refused.stderr}"
    line = one_line(refused.stderr)
    assert "refusing to upgrade to t_expand: the serving revision 0099" in line, line
    assert "is not one of this build's migrations (t_expand and its ancestors)" in line, line
    assert "`jotc-migrate head` in its image" in line, line
    assert revision(db) == [head_revision()], "the refused upgrade moved alembic_version"
    allowed = migrate.ok("upgrade", "--serving", "0099", "--allow-breaking", env=extra("expand"))
    said = "warning: upgrade to t_expand goes ahead (--allow-breaking) although"
    assert said in allowed.stderr, allowed.stderr
    assert revision(db) == ["t_expand"], "--allow-breaking did not proceed"


def test_record_serving_after_a_rollback_guards_the_next_upgrade(
    migrate: Migrate, db: Connection
) -> None:
    head = head_revision()
    migrate.ok("upgrade", env=extra("expand"))
    assert serving(db) == "t_expand"
    # helm rollback to the release built for the product head: its pre-rollback hook.
    rolled_back = migrate.ok("record-serving")
    assert f"{head} recorded as the serving revision" in rolled_back.stderr, rolled_back.stderr
    assert serving(db) == head, "record-serving did not record its build's head"
    assert revision(db) == ["t_expand"], "record-serving migrated"
    # With the rolled-back release serving, the contract step would strand it.
    refused = migrate("upgrade", env=RELEASE_N)
    assert refused.returncode == 1, f"exit {refused.returncode}: {refused.stderr}"
    assert f"serves {head} (recorded" in one_line(refused.stderr), refused.stderr


def test_an_older_build_rerun_on_a_newer_database_records_itself_as_serving(
    migrate: Migrate, db: Connection
) -> None:
    migrate.ok("upgrade", env=extra("expand"))
    migrate.ok("upgrade")  # this build knows no t_expand: nothing to do, and it serves next
    assert revision(db) == ["t_expand"], "an older build moved the schema"
    assert serving(db) == head_revision(), "the older build's head was not recorded as serving"


def test_record_serving_refuses_a_database_its_build_cannot_serve(
    migrate: Migrate, db: Connection
) -> None:
    migrate.ok("upgrade", env=extra("contract"))
    refused = migrate("record-serving")
    assert refused.returncode == 1, f"exit {refused.returncode}, expected 1: {refused.stderr}"
    line = one_line(refused.stderr)
    assert f"not recording {head_revision()} as the serving revision" in line, line
    assert "t_contract" in line, line
    assert "deploy a release built for t_contract or later" in line, line
    assert serving(db) == "t_contract", "a refused record-serving changed the record"


def test_a_downgrade_below_the_serving_revision_is_refused(
    migrate: Migrate, db: Connection
) -> None:
    head = head_revision()
    migrate.ok("upgrade")
    refused = migrate("downgrade", "-1")
    assert refused.returncode == 1, f"exit {refused.returncode}: {refused.stderr}"
    line = one_line(refused.stderr)
    below = ScriptDirectory.from_config(alembic_config()).get_revision(head).down_revision
    assert isinstance(below, str), f"{head} has no single revision before it: {below!r}"
    assert line.startswith(f"jotc-migrate: refusing to downgrade to {below}:"), line
    assert f"serves {head} (recorded in jotc_schema_serving)" in line, line
    assert f"cannot serve a database at {below}, which is older" in line, line
    assert "jotc-migrate record-serving" in line, line
    assert revision(db) == [head], "the refused downgrade moved alembic_version"
    # Once the older release serves (a rollback recorded it, or the operator says so), it may.
    migrate.ok("downgrade", "-1", "--serving", below)
    assert revision(db) == [below], "the downgrade did not reach the older revision"
    assert serving(db) == head, "a downgrade changed the serving record"


def test_a_downgrade_to_base_strands_any_release_and_warns_when_allowed(
    migrate: Migrate, db: Connection
) -> None:
    migrate.ok("upgrade")
    allowed = migrate.ok("downgrade", "base", "--allow-breaking")
    (warning,) = [line for line in allowed.stderr.splitlines() if "warning:" in line]
    assert "downgrade to base goes ahead (--allow-breaking) although" in warning, warning
    assert "cannot serve a database at base" in warning, warning
    assert revision(db) == [], "the downgrade to base did not happen"


def test_a_downgrade_to_what_alembic_cannot_reach_is_one_line(migrate: Migrate) -> None:
    migrate.ok("upgrade")
    # An unknown revision, and one that is not below the database's (a build that knows t_expand).
    for target, env in (("nosuchrevision", None), ("t_expand", extra("expand"))):
        result = migrate("downgrade", target, env=env)
        assert result.returncode == 2, f"{target}: exit {result.returncode}: {result.stderr}"
        assert f"cannot downgrade to {target}:" in one_line(result.stderr), result.stderr
