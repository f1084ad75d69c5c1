"""The compatibility window as plain logic, in process: every shipped migration declares it, the
rule deciding whether a build may serve a database, and what each migration's record says. The
same through jotc-migrate against real PostgreSQL: integration/test_compat.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from alembic.script import ScriptDirectory

from jotc_migrations.cli import alembic_config
from jotc_migrations.compat import SchemaState, chain, declared_back_to, problem
from jotc_migrations.errors import EXIT_MIGRATION_FAILED, MigrateError


def test_every_migration_declares_its_window() -> None:
    for script in ScriptDirectory.from_config(alembic_config()).walk_revisions():
        declared = getattr(script.module, "compatible_back_to", None)
        assert isinstance(declared, str), f"{script.revision} declares {declared!r}"


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
    expected = "may serve" if verdict is None else f"refused with {verdict!r}"
    assert (found is None) if verdict is None else (found is not None and verdict in found), (
        f"{state}: expected {expected}, got {found!r}"
    )


@dataclass
class Module:
    pass


@dataclass
class Script:
    revision: str
    down_revision: str | None
    module: Any = field(default_factory=Module)


class Revisions:
    """A revision map of 0001 <- 0002 <- 0003."""

    def __init__(self) -> None:
        self.scripts = {
            "0001": Script("0001", None),
            "0002": Script("0002", "0001"),
            "0003": Script("0003", "0002"),
        }

    def get_revision(self, revision: str) -> Script:
        return self.scripts[revision]


def test_a_revisions_chain_runs_newest_first_to_the_base() -> None:
    revisions = Revisions()
    found = chain(revisions, revisions.get_revision("0003"))
    assert found == ["0003", "0002", "0001"], f"chain {found}"


def test_a_migration_that_declares_nothing_is_compatible_only_with_itself() -> None:
    revisions = Revisions()
    declared = declared_back_to(revisions, revisions.get_revision("0002"))
    assert declared == "0002", f"an undeclared window became {declared!r}"


def test_a_declared_ancestor_is_kept() -> None:
    revisions = Revisions()
    script = revisions.get_revision("0003")
    script.module.compatible_back_to = "0001"
    assert declared_back_to(revisions, script) == "0001", "the declared ancestor was not kept"


def test_a_window_that_is_not_an_ancestor_fails_the_migration() -> None:
    revisions = Revisions()
    script = revisions.get_revision("0002")
    script.module.compatible_back_to = "0003"  # a later revision: no build could know it
    with pytest.raises(MigrateError, match="not the revision itself or one of its ancestors") as e:
        declared_back_to(revisions, script)
    assert e.value.exit_code == EXIT_MIGRATION_FAILED, f"exit code {e.value.exit_code}"
