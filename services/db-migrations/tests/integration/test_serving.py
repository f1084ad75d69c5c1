"""The release guard through the real jotc-migrate against real PostgreSQL: an upgrade that would
strand the pods still serving is refused in one line and changes nothing, unless breaking is asked
for; the serving revision comes from --serving, else from what the running pods report in
jotc_schema_readers (the oldest seen in the last READERS_TTL_SECONDS), else from the database's
revision; downgrade obeys the same rule.

The releases are a test-only chain (tests/revisions/README.md): the product head is release N-2,
t_expand (an expand step, compatible back to N-2) is N-1, and t_note_required (a contract step,
compatible back to t_expand only) is N. A pod's report is the row the API writes while its
/readyz schema check passes; the tests write it as the API does, with seen_at set explicitly for
a pod that stopped reporting. The rules themselves are unit/test_serving_rule.py."""

from __future__ import annotations

import re

from alembic.script import ScriptDirectory
from support import Connection, Migrate, extra, revision

from jotc_migrations.cli import alembic_config, head_revision
from jotc_migrations.serving import READERS_TTL_SECONDS

# A build whose head is release N: the whole test-only chain.
RELEASE_N = extra("expand", "contract_after_expand")
# What the refusal says of a revision the running pods reported.
REPORTED = r"\(reported by running pods, seen \d+ s ago\)"


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"not one line: {stderr}"
    return lines[0]


def warning_then_line(stderr: str) -> tuple[str, str]:
    """A run with --serving: the warning that it overrides the pods, then one line."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 2, f"not a warning and one line: {stderr}"
    assert "overrides what running pods report" in lines[0], lines[0]
    return lines[0], lines[1]


def report(db: Connection, serving: str, seconds_ago: int = 0) -> None:
    """What an API pod built for ``serving`` writes while ready, as of ``seconds_ago``."""
    db.execute(
        "INSERT INTO jotc_schema_readers (revision, seen_at) "
        "VALUES (%s, now() - make_interval(secs => %s)) "
        "ON CONFLICT (revision) DO UPDATE SET seen_at = EXCLUDED.seen_at",
        (serving, seconds_ago),
    )


def stop_reporting(db: Connection, serving: str) -> None:
    """The pods built for ``serving`` stopped five minutes ago."""
    report(db, serving, seconds_ago=300)


def readers(db: Connection) -> set[str]:
    return {str(row[0]) for row in db.execute("SELECT revision FROM jotc_schema_readers")}


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
    _, line = warning_then_line(refused.stderr)
    assert line.startswith("jotc-migrate: refusing to upgrade to t_note_required:"), line
    assert f"serves {head} (--serving" in line, line
    assert "t_note_required is compatible back to t_expand only" in line, line
    assert f"deploy a release built for t_expand first and let it replace {head}'s pods," in line
    assert "--allow-breaking (JOTC_MIGRATE_ALLOW_BREAKING=true)" in line, line
    assert revision(db) == [head], "the refused upgrade moved alembic_version"
    assert columns(db) == before, "the refused upgrade changed jump_requests (t_expand ran)"
    assert newest_record(db) == head, "the refused upgrade recorded a revision"
    # The serving release's readiness rule (compat.problem, as /readyz and its init container
    # decide it): the database is still one it serves.
    kept = migrate.ok("check")
    assert f"can be served by this build ({head})" in kept.stderr, kept.stderr

    crossed = migrate.ok("upgrade", "--serving", head, "--allow-breaking", env=RELEASE_N)

    overrides, breaks = [line for line in crossed.stderr.splitlines() if "warning:" in line]
    assert "overrides what running pods report" in overrides, crossed.stderr
    said = "warning: upgrade to t_note_required goes ahead (--allow-breaking) although"
    assert said in breaks, crossed.stderr
    assert f"serves {head}" in breaks, breaks
    assert revision(db) == ["t_note_required"], "--allow-breaking did not reach the target"
    stranded = migrate("check")
    assert stranded.returncode == 1, f"{head} still serves after the contract: {stranded.stderr}"


def test_the_oldest_live_reader_is_guarded_until_its_report_ages_out(
    migrate: Migrate, db: Connection
) -> None:
    head = head_revision()
    migrate.ok("upgrade", env=extra("expand"))
    report(db, head)  # N-2's pods still run (a stalled rollout, or a second release)
    report(db, "t_expand")  # N-1's pods are up

    refused = migrate("upgrade", env=RELEASE_N)

    assert refused.returncode == 1, f"exit {refused.returncode}, expected 1: {refused.stderr}"
    line = one_line(refused.stderr)
    assert re.search(f"the running release serves {head} {REPORTED}", line), line
    assert "t_note_required is compatible back to t_expand only" in line, line
    assert f"counts until {READERS_TTL_SECONDS} s after the last one stops" in line, line
    assert revision(db) == ["t_expand"], "the refused upgrade moved alembic_version"

    stop_reporting(db, head)
    crossed = migrate.ok("upgrade", env=RELEASE_N)
    assert "upgraded from t_expand to t_note_required" in crossed.stderr, crossed.stderr
    assert "warning" not in crossed.stderr, crossed.stderr


def test_two_upgrades_in_a_row_are_refused_while_the_first_ones_pods_still_serve(
    migrate: Migrate, db: Connection
) -> None:
    """The reviewer's case: N-1's upgrade migrated, but N-2's pods have not been replaced (N
    follows before N-1's rollout finished). N's contract step would strand them: refused."""
    head = head_revision()
    migrate.ok("upgrade")
    report(db, head)
    migrate.ok("upgrade", env=extra("expand"))  # N-1: expand, compatible back to N-2
    assert revision(db) == ["t_expand"], "the expand did not run"
    expanded = columns(db)

    refused = migrate("upgrade", env=RELEASE_N)  # N, before any of N-1's pods reported

    assert refused.returncode == 1, f"exit {refused.returncode}, expected 1: {refused.stderr}"
    line = one_line(refused.stderr)
    assert line.startswith("jotc-migrate: refusing to upgrade to t_note_required:"), line
    assert re.search(f"serves {head} {REPORTED}", line), line
    assert revision(db) == ["t_expand"], "the refused upgrade moved alembic_version"
    assert columns(db) == expanded, "the refused upgrade changed jump_requests"
    assert newest_record(db) == "t_expand", "the refused upgrade recorded a revision"


def test_a_release_cycle_without_any_override(migrate: Migrate, db: Connection) -> None:
    """Upgrade one release at a time, each after the pods before it stopped; roll back; undo the
    contract. Upgrades write no report: only the pods do."""
    head = head_revision()
    migrate.ok("upgrade")
    assert readers(db) == set(), "jotc-migrate reported a reader"
    report(db, head)
    migrate.ok("upgrade", env=extra("expand"))  # N-1, while N-2 serves
    report(db, "t_expand")
    stop_reporting(db, head)
    crossed = migrate.ok("upgrade", env=RELEASE_N)  # N, while N-1 serves
    assert "upgraded from t_expand to t_note_required" in crossed.stderr, crossed.stderr
    assert "warning" not in crossed.stderr, crossed.stderr
    report(db, "t_note_required")
    stop_reporting(db, "t_expand")
    # While N's pods serve, the contract cannot be undone.
    refused = migrate("downgrade", "t_expand", env=RELEASE_N)
    assert refused.returncode == 1, f"exit {refused.returncode}, expected 1: {refused.stderr}"
    assert re.search(f"serves t_note_required {REPORTED}", one_line(refused.stderr)), refused.stderr
    # helm rollback to N-1: its pods replace N's, whose report ages out; then the downgrade.
    report(db, "t_expand")
    stop_reporting(db, "t_note_required")
    migrate.ok("downgrade", "t_expand", env=RELEASE_N)
    assert revision(db) == ["t_expand"], "the downgrade to the serving revision did not happen"
    assert readers(db) == {head, "t_expand", "t_note_required"}, "a downgrade touched the reports"


def test_without_a_live_reader_the_databases_revision_is_the_serving_one(
    migrate: Migrate, db: Connection
) -> None:
    migrate.ok("upgrade")
    stop_reporting(db, "t_expand")  # a report too old to count
    refused = migrate("upgrade", env=RELEASE_N)
    assert refused.returncode == 1, f"exit {refused.returncode}: {refused.stderr}"
    line = one_line(refused.stderr)
    assert f"serves {head_revision()} (the database's revision)" in line, line
    assert "counts until" not in line, line
    # A database a jotc-migrate without the guard migrated: the same, and the table is created.
    db.execute("DROP TABLE jotc_schema_readers")
    again = migrate("upgrade", env=RELEASE_N)
    assert f"serves {head_revision()} (the database's revision)" in one_line(again.stderr)
    migrate.ok("upgrade", env=extra("expand"))
    assert readers(db) == set(), "the table of the pods' reports was not created again"


def test_the_chart_settings_name_the_serving_revision_and_allow_breaking(
    migrate: Migrate, db: Connection
) -> None:
    migrate.ok("upgrade")
    settings = {"JOTC_MIGRATE_SERVING_REVISION": head_revision()}
    refused = migrate("upgrade", env={**RELEASE_N, **settings})
    warning, line = warning_then_line(refused.stderr)
    assert "from --serving or JOTC_MIGRATE_SERVING_REVISION overrides" in warning, warning
    assert "(--serving or JOTC_MIGRATE_SERVING_REVISION)" in line, line
    bad = migrate("upgrade", env={**RELEASE_N, "JOTC_MIGRATE_ALLOW_BREAKING": "maybe"})
    assert bad.returncode == 2, f"exit {bad.returncode}, expected 2: {bad.stderr}"
    assert "JOTC_MIGRATE_ALLOW_BREAKING is 'maybe'" in one_line(bad.stderr), bad.stderr
    assert revision(db) == [head_revision()], "a refused upgrade moved alembic_version"
    migrate.ok("upgrade", env={**RELEASE_N, **settings, "JOTC_MIGRATE_ALLOW_BREAKING": "yes"})
    assert revision(db) == ["t_note_required"], "JOTC_MIGRATE_ALLOW_BREAKING=yes did not proceed"


def test_a_named_revision_overrides_the_pods(migrate: Migrate, db: Connection) -> None:
    head = head_revision()
    migrate.ok("upgrade", env=extra("expand"))
    report(db, head)  # pods the operator knows are gone (say, a deleted second release)
    report(db, "t_expand")
    crossed = migrate.ok("upgrade", "--serving", "t_expand", env=RELEASE_N)
    warning = crossed.stderr.splitlines()[0]
    assert warning.startswith(
        "jotc-migrate: warning: serving revision t_expand from --serving or "
        "JOTC_MIGRATE_SERVING_REVISION overrides what running pods report ("
    ), warning
    assert re.search(r"t_expand seen \d+ s ago", warning), warning
    assert re.search(rf"{head} seen \d+ s ago", warning), warning
    assert "--reuse-values keeps it (migrations.servingRevision)" in warning, warning
    assert revision(db) == ["t_note_required"], "the named revision did not let the contract run"


def test_a_serving_revision_the_build_does_not_know_is_refused(
    migrate: Migrate, db: Connection
) -> None:
    migrate.ok("upgrade")
    refused = migrate("upgrade", "--serving", "0099", env=extra("expand"))
    assert refused.returncode == 1, f"exit {refused.returncode}: {refused.stderr}"
    _, line = warning_then_line(refused.stderr)
    assert "refusing to upgrade to t_expand: the serving revision 0099" in line, line
    assert "is not one of this build's migrations (t_expand and its ancestors)" in line, line
    assert "`jotc-migrate head` in its image" in line, line
    assert revision(db) == [head_revision()], "the refused upgrade moved alembic_version"
    allowed = migrate.ok("upgrade", "--serving", "0099", "--allow-breaking", env=extra("expand"))
    said = "warning: upgrade to t_expand goes ahead (--allow-breaking) although"
    assert said in allowed.stderr, allowed.stderr
    assert revision(db) == ["t_expand"], "--allow-breaking did not proceed"


def test_a_live_reader_the_build_does_not_know_is_refused(migrate: Migrate, db: Connection) -> None:
    """Pods of a newer build serve (this image is an older one): it cannot tell what they need."""
    head = head_revision()
    migrate.ok("upgrade")
    report(db, head)
    report(db, "0099")
    refused = migrate("upgrade", env=extra("expand"))
    assert refused.returncode == 1, f"exit {refused.returncode}: {refused.stderr}"
    line = one_line(refused.stderr)
    assert re.search(f"refusing to upgrade to t_expand: the serving revision 0099 {REPORTED}", line)
    assert "is not one of this build's migrations (t_expand and its ancestors)" in line, line
    assert "a newer build's pods serve it: pass --serving with the revision this upgrade" in line
    assert revision(db) == [head], "the refused upgrade moved alembic_version"
    migrate.ok("upgrade", "--serving", head, env=extra("expand"))
    assert revision(db) == ["t_expand"], "--serving did not override the pods' report"


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
    assert f"serves {head} (the database's revision)" in line, line
    assert f"cannot serve a database at {below}, which is older" in line, line
    assert f"roll the release back to one built for {below} first" in line, line
    assert revision(db) == [head], "the refused downgrade moved alembic_version"
    # Once only the older release's pods report (a rollback replaced the newer ones), it may.
    report(db, below)
    migrate.ok("downgrade", "-1")
    assert revision(db) == [below], "the downgrade did not reach the older revision"


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
