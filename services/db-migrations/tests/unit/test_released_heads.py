"""The released heads (released-heads.txt): the newest line is this build's version at this
build's head, and every release's migrations are compatible back to the head of the release before
it, so a rolling upgrade from one release to the next never strands the pods it replaces (the rule
jotc-migrate's guard applies at upgrade time, serving.py). A release that ships an expand and its
contract together, or a contract without the expand release before it, fails here first."""

from __future__ import annotations

import tomllib
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory

from jotc_migrations.cli import alembic_config, product_head
from jotc_migrations.compat import chain
from jotc_migrations.serving import first_stranding
from jotc_migrations.serving import known as serving_known

SERVICE = Path(__file__).resolve().parents[2]
RELEASED_HEADS = SERVICE / "released-heads.txt"


def released(text: str) -> list[tuple[str, str]]:
    """(release, head) for each line that is not blank or a comment."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if words:
            assert len(words) == 2, f"released-heads.txt:{number}: not `<release> <head>`: {line!r}"
            found.append((words[0], words[1]))
    return found


def problems(releases: list[tuple[str, str]], revisions: Any) -> list[str]:
    """What is wrong with the releases' heads in this chain of revisions; nothing when each
    release's migrations keep the release before it serving."""
    found = []
    names = [name for name, _ in releases]
    twice = sorted(name for name in set(names) if names.count(name) > 1)
    found += [f"release {name} is listed twice" for name in twice]
    known = serving_known(revisions)
    unknown = [(name, head) for name, head in releases if head not in known]
    found += [f"release {name}'s head {head} is no migration" for name, head in unknown]
    if found:
        return found
    for (before_name, before), (name, head) in pairwise(releases):
        newest_first = chain(revisions, revisions.get_revision(head))
        if before not in newest_first:
            found.append(f"release {name}'s head {head} does not follow {before_name}'s ({before})")
            continue
        shipped = newest_first[: newest_first.index(before)][::-1]
        stranding = first_stranding(revisions, before, shipped)
        if stranding is not None:
            found.append(
                f"release {name} strands {before_name}: {stranding.revision} is compatible back "
                f"to {stranding.back_to} only, newer than {before_name}'s head {before}; ship it "
                f"in the release after one built for {stranding.back_to}"
            )
    return found


def test_the_released_heads_keep_each_previous_release_serving() -> None:
    releases = released(RELEASED_HEADS.read_text())
    revisions = ScriptDirectory.from_config(alembic_config()).revision_map
    assert problems(releases, revisions) == []


def test_the_newest_release_is_this_version_at_this_builds_head() -> None:
    version = tomllib.loads((SERVICE / "pyproject.toml").read_text())["project"]["version"]
    head = product_head()
    assert released(RELEASED_HEADS.read_text())[-1] == (version, head), (
        f"released-heads.txt must end with `{version} {head}` (pyproject.toml's version, this "
        "build's head): add that line, or, if the last line's release has not shipped, correct it"
    )


def test_an_expand_and_its_contract_in_one_release_fail(three_releases: Any) -> None:
    head = product_head()
    found = problems([("1.0", head), ("1.1", "t_note_required")], three_releases)
    assert found == [
        f"release 1.1 strands 1.0: t_note_required is compatible back to t_expand only, newer "
        f"than 1.0's head {head}; ship it in the release after one built for t_expand"
    ], found


def test_the_expand_and_the_contract_one_release_apart_pass(three_releases: Any) -> None:
    releases = [
        ("1.0", product_head()),
        ("1.1", "t_expand"),
        ("1.1.1", "t_expand"),  # a release without a migration
        ("1.2", "t_note_required"),
    ]
    assert problems(releases, three_releases) == []


def test_heads_that_go_back_are_unknown_or_repeat_a_release_fail(three_releases: Any) -> None:
    head = product_head()
    backwards = problems([("1.1", "t_expand"), ("1.2", head)], three_releases)
    assert backwards == [f"release 1.2's head {head} does not follow 1.1's (t_expand)"], backwards
    unknown = problems([("1.0", head), ("1.1", "0999"), ("1.1", head)], three_releases)
    assert unknown == [
        "release 1.1 is listed twice",
        "release 1.1's head 0999 is no migration",
    ], unknown


def test_a_line_must_name_a_release_and_a_head() -> None:
    parsed = released("# comment\n\n1.0 0001  # first\n1.1 0002\n")
    assert parsed == [("1.0", "0001"), ("1.1", "0002")], parsed
    with pytest.raises(AssertionError, match=r"released-heads\.txt:2: not `<release> <head>`"):
        released("1.0 0001\n1.1\n")
