"""Every value of the chart is documented: in values.yaml by a `# --` comment, in values.schema.json
by a "description".

In values.yaml every leaf (a value that is not a mapping with keys: a string, a number, a list, `{}`)
has a description: a `# --` comment block directly above its own key, or, when it has none, the
one of its nearest commented section, provided nothing else inside that section has a `# --`
comment of its own. So `resources:` with one comment documents its requests and limits, while a
section whose keys are commented one by one (`pgbouncer:`) documents none of them: each needs its
own. Sections need no comment of their own."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from chart import CHART
from support import ROOT

KEY = re.compile(r"^(?P<indent> *)(?P<key>[^\s#:-][^:]*?):(?: |$)")


def comments_above(text: str) -> dict[tuple[str, ...], list[str]]:
    """Each key written on a line of its own (its path from the top), and the comment block directly
    above it (its lines, stripped; empty when there is none). Keys inside lists and flow mappings
    are not written on a line of their own; their list or mapping is the value documented."""
    comments: dict[tuple[str, ...], list[str]] = {}
    stack: list[tuple[int, str]] = []
    block: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            block.append(stripped)
            continue
        match = KEY.match(line)
        if match:
            indent = len(match["indent"])
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, match["key"].strip("\"'")))
            comments[tuple(key for _, key in stack)] = block
        block = []  # a blank line, or any other line, ends a comment block
    return comments


def described_keys(text: str) -> dict[tuple[str, ...], bool]:
    """Each key written on a line of its own, and whether a `# --` comment block sits directly above it."""
    return {path: bool(block) and block[0].startswith("# --") for path, block in comments_above(text).items()}


def description_in_values(path: tuple[str, ...]) -> str:
    """The `# --` comment above the value at path in values.yaml, as one line of prose."""
    block = comments_above((CHART / "values.yaml").read_text())[path]
    assert block, f"values.yaml: {'.'.join(path)} has no comment"
    assert block[0].startswith("# --"), f"values.yaml: {'.'.join(path)} has no `# --` comment"
    return " ".join([block[0].removeprefix("# --").strip(), *(line.removeprefix("#").strip() for line in block[1:])])


def description_in_schema(path: tuple[str, ...]) -> str:
    node: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
    for key in path:
        node = node["properties"][key]
    return str(node["description"])


def leaves(node: dict[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for key, value in node.items():
        if isinstance(value, dict) and value:
            yield from leaves(value, (*path, key))
        else:
            yield (*path, key)


def undocumented_values(text: str) -> list[str]:
    described = described_keys(text)
    commented = {path for path, has in described.items() if has}
    missing = []
    for leaf in leaves(yaml.safe_load(text)):
        documented = False
        for depth in range(len(leaf), 0, -1):
            section = leaf[:depth]
            if section in commented:
                inside = {path for path in commented if len(path) > depth and path[:depth] == section}
                documented = depth == len(leaf) or not inside
                break
        if not documented:
            missing.append(".".join(leaf))
    return missing


def properties(node: dict[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
    for key, schema in node.get("properties", {}).items():
        yield (*path, key), schema
        yield from properties(schema, (*path, key))


def test_every_value_has_a_description_comment() -> None:
    missing = undocumented_values((CHART / "values.yaml").read_text())
    assert not missing, f"values.yaml: add a `# --` comment above each of {missing}"


def test_every_schema_property_has_a_description() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    missing = [".".join(path) for path, node in properties(schema) if not node.get("description")]
    assert not missing, f'values.schema.json: add a "description" to each of {missing}'


def test_what_counts_as_documented() -> None:
    sample = """\
# -- Documented by its own comment.
alone: 1
# -- A section documented as one value: its keys need nothing more.
resources:
  requests: {cpu: 1}
  limits:
    cpu: 2
group:
  # -- This key has its own.
  first: true
  second: false
  # Not a description: no `--`.
  third: ""
# -- A section whose keys are commented one by one documents none of them.
pgbouncer:
  # -- Its own.
  image: x
  nodeSelector: {}

  # -- A blank line between a comment and its key ends the comment.

  tolerations: []
empty: {}
"""
    assert undocumented_values(sample) == [
        "group.second",
        "group.third",
        "pgbouncer.nodeSelector",
        "pgbouncer.tolerations",
        "empty",
    ]


# The pods the render-time budget checks count (jotc.validate in templates/_helpers.tpl): the API's
# most replicas, the pods its rolling update starts above them and the old ones still terminating;
# the pooler's replicas, the instance its rollout starts and the one it stopped, still exiting.
# The descriptions write multiplication and minus signs, not x and -.
TIMES, MINUS = "\N{MULTIPLICATION SIGN}", "\N{MINUS SIGN}"
API_PODS = f"(max replicas + surge + terminating) {TIMES} workers"
POOLER_PODS = f"(its replicas + 1 surge + 1 terminating) {TIMES}"
BUDGETS = {
    ("database", "connectionBudget"): (API_PODS, POOLER_PODS),
    ("database", "pooler", "maxClientConn"): (API_PODS, f"maxClientConn {TIMES} (replicas {MINUS} 1, at least 1"),
    ("redis", "connectionBudget"): (API_PODS,),
}


@pytest.mark.parametrize("path", list(BUDGETS), ids=".".join)
def test_each_connection_budget_is_described_with_the_pods_its_check_counts(path: tuple[str, ...]) -> None:
    for where, description in (
        ("values.yaml", description_in_values(path)),
        ("values.schema.json", description_in_schema(path)),
    ):
        for counted in BUDGETS[path]:
            assert counted in description, f"{where}: {'.'.join(path)} should say {counted!r}: {description}"


def test_the_serving_revision_is_described_as_overriding_what_the_running_pods_report() -> None:
    """migrations.servingRevision replaces the revisions jotc-migrate's release guard reads from the
    table the API pods report in; given once, `helm upgrade --reuse-values` keeps it."""
    serving = (ROOT / "services/db-migrations/src/jotc_migrations/serving.py").read_text()
    table = re.search(r'^READERS_TABLE = "(\w+)"$', serving, re.MULTILINE)
    assert table, "serving.py: READERS_TABLE, the table the release guard reads, not found"
    path = ("migrations", "servingRevision")
    for where, description in (
        ("values.yaml", description_in_values(path)),
        ("values.schema.json", description_in_schema(path)),
    ):
        for said in (f"overriding the revisions the running API pods report in the table {table[1]}", "--reuse-values"):
            assert said in description, f"{where}: migrations.servingRevision should say {said!r}: {description}"
