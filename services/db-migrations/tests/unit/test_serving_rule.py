"""The release guard's rules as plain logic, in process, on the test-only chain of three releases
(tests/revisions/README.md: the product head, t_expand, t_note_required): which revisions a
migration may pass through while a release serves, and which revision serves, from what the
operator names, the running pods report and the database's revision. The same through
jotc-migrate against real PostgreSQL: integration/test_serving.py."""

from __future__ import annotations

from typing import Any

import pytest

from jotc_migrations.cli import product_head
from jotc_migrations.serving import (
    READERS_TTL_SECONDS,
    Reader,
    Serving,
    Stranding,
    first_stranding,
    position,
    serving_revision,
)


def test_positions_count_from_the_first_migration(three_releases: Any) -> None:
    head = position(three_releases, product_head())
    assert position(three_releases, None) == 0, "no schema is position 0"
    assert position(three_releases, "t_expand") == head + 1, "t_expand follows the head"
    assert position(three_releases, "t_note_required") == head + 2, "t_note_required follows it"


@pytest.mark.parametrize(
    ("serving", "passed", "stranding"),
    [
        # One release at a time: each step is compatible back to the release before it.
        ("head", ["t_expand"], None),
        ("t_expand", ["t_note_required"], None),
        # Two at once: the contract step strands the release before the expand.
        ("head", ["t_expand", "t_note_required"], Stranding("t_note_required", "t_expand")),
        # A serving revision newer than the step's window needs nothing more.
        ("t_note_required", ["t_expand", "t_note_required"], None),
        # A revision older than the serving one is compatible back to it by its position.
        ("t_expand", ["head"], None),
    ],
)
def test_the_rule(
    three_releases: Any, serving: str, passed: list[str], stranding: Stranding | None
) -> None:
    serving, *passed = [product_head() if name == "head" else name for name in [serving, *passed]]
    found = first_stranding(three_releases, serving, passed)
    assert found == stranding, f"serving {serving}, passing {passed}: {found}, not {stranding}"


# --- Where the serving revision comes from --------------------------------------------------------

NAMED_SOURCE = "--serving or JOTC_MIGRATE_SERVING_REVISION"


def resolve(
    revisions: Any, named: str | None, reported: list[Reader], database: str | None = "t_expand"
) -> Serving | None:
    return serving_revision(revisions, named, NAMED_SOURCE, reported, database)


def test_the_oldest_live_reader_is_the_serving_revision(three_releases: Any) -> None:
    head = product_head()
    reported = [Reader("t_note_required", 3), Reader(head, 12.4), Reader("t_expand", 20)]
    found = resolve(three_releases, None, reported, database="t_note_required")
    assert found == Serving(head, "reported by running pods, seen 12 s ago", reported=True), found


@pytest.mark.parametrize(
    ("ages", "serving"),
    [
        # head's pods stopped reporting longer ago than three heartbeats: only t_expand serves.
        ((READERS_TTL_SECONDS + 1, 5), "t_expand"),
        ((300, 5), "t_expand"),
        # A report exactly READERS_TTL_SECONDS old still counts.
        ((READERS_TTL_SECONDS, 5), "head"),
    ],
)
def test_stale_reports_are_ignored(
    three_releases: Any, ages: tuple[float, float], serving: str
) -> None:
    head = product_head()
    reported = [Reader(head, ages[0]), Reader("t_expand", ages[1])]
    found = resolve(three_releases, None, reported)
    wanted = head if serving == "head" else serving
    assert found is not None, "no serving revision"
    assert found.revision == wanted, f"reports {reported}: serving {found}, not {wanted}"


def test_without_a_live_reader_the_database_revision_serves(three_releases: Any) -> None:
    stale = [Reader(product_head(), 300)]
    for reported in ([], stale):
        found = resolve(three_releases, None, reported, database="t_expand")
        assert found == Serving("t_expand", "the database's revision"), found
        assert resolve(three_releases, None, reported, database=None) is None, "nothing serves"


def test_a_live_reader_this_build_does_not_know_is_the_serving_revision(
    three_releases: Any,
) -> None:
    """The guard then refuses it (cli.guard): a newer build serves, and this one cannot place it."""
    found = resolve(three_releases, None, [Reader(product_head(), 2), Reader("0099", 7)])
    assert found == Serving("0099", "reported by running pods, seen 7 s ago", reported=True)
    # A stale one is ignored like any other.
    stale = resolve(three_releases, None, [Reader(product_head(), 2), Reader("0099", 300)])
    assert stale is not None, "no serving revision"
    assert stale.revision == product_head(), stale


def test_a_named_revision_overrides_the_pods_and_says_so(three_releases: Any) -> None:
    head = product_head()
    reported = [Reader("t_expand", 4), Reader("0099", 300)]
    found = resolve(three_releases, head, reported)
    assert found is not None, "no serving revision"
    assert (found.revision, found.source, found.reported) == (head, NAMED_SOURCE, False), found
    assert found.warning is not None, "naming the revision did not warn"
    assert found.warning.startswith(
        f"serving revision {head} from {NAMED_SOURCE} overrides what running pods report "
        "(t_expand seen 4 s ago);"
    ), found.warning
    assert "--reuse-values keeps it (migrations.servingRevision)" in found.warning, found.warning
    alone = resolve(three_releases, head, [], database=None)
    assert alone is not None, "a named revision serves a database without schema too"
    assert alone.warning is not None, "naming the revision did not warn"
    assert f"report (none in the last {READERS_TTL_SECONDS} s);" in alone.warning, alone.warning
