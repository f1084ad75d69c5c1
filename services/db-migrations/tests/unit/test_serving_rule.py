"""The release guard's rule as plain logic, in process, on the test-only chain of three releases
(tests/revisions/README.md: the product head, t_expand, t_note_required): which revisions a
migration may pass through while a release serves. The same through jotc-migrate against real
PostgreSQL: integration/test_serving.py."""

from __future__ import annotations

from typing import Any

import pytest

from jotc_migrations.cli import product_head
from jotc_migrations.serving import Stranding, first_stranding, position


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
