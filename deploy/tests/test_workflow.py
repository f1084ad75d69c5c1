"""The CI workflow for the project's public home (.github/workflows/ci.yml): linted with actionlint
and zizmor, and checked to do what its header says. It cannot run here (no GitHub runner, no kind,
no registry); what it runs on Kubernetes is rendered and validated here for the same versions."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart import CHART, invalid_on, one, render
from common import CommandError, apt_install, can_install
from support import ROOT, committed_files, venv_tool

WORKFLOWS = sorted((ROOT / ".github/workflows").glob("*.yml"))
CI = ROOT / ".github/workflows/ci.yml"
KIND_VALUES = ROOT / ".github/kind-values.yaml"


def workflow() -> dict[Any, Any]:
    parsed: dict[Any, Any] = yaml.safe_load(CI.read_text())
    return parsed


def steps(job: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = workflow()["jobs"][job]["steps"]
    return found


def scripts(job: str) -> str:
    return "\n".join(step.get("run", "") for step in steps(job))


def tool(command: str, *args: str) -> subprocess.CompletedProcess[str]:
    """A linter locked in deploy/uv.lock, run from this environment."""
    return subprocess.run(
        [venv_tool(command), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def shellcheck_on_path() -> None:
    """actionlint checks each `run:` script with shellcheck when it finds one: install Debian's as
    root, as the container stage installs its packages; elsewhere actionlint runs without it."""
    if shutil.which("shellcheck") or not can_install():
        return
    with contextlib.suppress(CommandError):
        apt_install("shellcheck")


def test_actionlint_passes() -> None:
    shellcheck_on_path()
    result = tool("actionlint", *map(str, WORKFLOWS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_zizmor_finds_nothing() -> None:
    result = tool("zizmor", "--offline", "--no-progress", *map(str, WORKFLOWS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_action_is_pinned_to_a_commit() -> None:
    for job in workflow()["jobs"].values():
        for step in job.get("steps", []):
            if "uses" in step:
                assert re.fullmatch(r"[\w-]+/[\w-]+@[0-9a-f]{40}", step["uses"]), step["uses"]


def test_scripts_test_on_every_push_and_pull_request() -> None:
    triggers = workflow()[True]  # YAML 1.1 reads the key `on` as true
    assert set(triggers) == {"push", "pull_request"}
    assert triggers["push"]["branches"] == ["**"]
    assert "scripts/test" in scripts("test").split()
    assert workflow()["permissions"] == {}


def test_images_for_two_architectures_only_on_tags_and_after_every_check() -> None:
    jobs = workflow()["jobs"]
    assert workflow()[True]["push"]["tags"] == ["v*"]
    assert jobs["images"]["if"] == "startsWith(github.ref, 'refs/tags/v')"
    assert set(jobs["images"]["needs"]) == {"test", "kind", "audit"}
    assert {row["arch"] for row in jobs["images"]["strategy"]["matrix"]["include"]} == {"amd64", "arm64"}
    build = scripts("images")
    assert "--push" in build
    for service in ("api", "db-migrations", "loadtest"):
        assert (ROOT / "services" / service / "Dockerfile").exists()
    assert "for service in api db-migrations loadtest" in build
    assert "imagetools create" in scripts("manifests")
    assert jobs["images"]["permissions"]["packages"] == "write"


def kind_minors() -> list[int]:
    rows = workflow()["jobs"]["kind"]["strategy"]["matrix"]["include"]
    minors = []
    for row in rows:
        version = re.search(r"kindest/node:v1\.(\d+)\.\d+@sha256:[0-9a-f]{64}$", row["node"])
        assert version, row["node"]
        assert row["kubernetes"] == f"1.{version.group(1)}"
        minors.append(int(version.group(1)))
    return minors


def test_kind_covers_the_oldest_claimed_minor_and_1_35() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    oldest = int(re.fullmatch(r">=1\.(\d+)\.0-0", chart["kubeVersion"]).group(1))  # type: ignore[union-attr]
    assert set(kind_minors()) == {oldest, 35}


def test_kind_installs_waits_tests_and_runs_a_headless_swarm_through_the_ingress() -> None:
    run = scripts("kind")
    assert re.search(r"helm install jotc .*--wait", run)
    assert "helm test jotc" in run
    assert re.search(r"helm upgrade jotc .*--set locust\.enabled=true --wait --wait-for-jobs", run)
    values = yaml.safe_load(KIND_VALUES.read_text())
    assert values["locust"]["mode"] == "headless"
    assert values["locust"]["target"] == f"http://{values['api']['ingress']['host']}"
    # the Secrets the values name are the ones the job creates
    assert f"create secret generic {values['adminToken']['existingSecret']} " in run
    evaluation = yaml.safe_load((CHART / "ci/evaluation-values.yaml").read_text())["evaluation"]["existingSecret"]
    assert f"create secret generic {evaluation} " in run


def kind_render() -> list[dict[str, Any]]:
    return render("evaluation-values", "-f", str(KIND_VALUES), "--set", "locust.enabled=true")


def test_what_kind_installs_is_valid_on_its_kubernetes_versions() -> None:
    docs = kind_render()
    errors = [error for minor in kind_minors() for error in invalid_on(minor, docs)]
    assert not errors, "\n".join(errors)
    ingress = one(docs, "Ingress")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert {d["kind"] for d in docs if "locust" in d["metadata"]["name"]} >= {"Job", "Service"}


def test_the_audit_covers_every_lock_file() -> None:
    run = scripts("audit")
    assert "git ls-files '*uv.lock'" in run
    assert "git ls-files '*package-lock.json'" in run
    # pip-audit is pinned in deploy's dev group, locked in deploy/uv.lock, and run from that environment.
    dev = tomllib.loads((ROOT / "deploy/pyproject.toml").read_text())["dependency-groups"]["dev"]
    pins = [pin for pin in dev if re.fullmatch(r"pip-audit==\S+", pin)]
    assert len(pins) == 1, dev
    lock = tomllib.loads((ROOT / "deploy/uv.lock").read_text())["package"]
    assert [package["version"] for package in lock if package["name"] == "pip-audit"] == [pins[0].split("==")[1]]
    assert "sync --project deploy --locked" in run
    assert "pip_audit=deploy/.venv/bin/pip-audit" in run
    assert not re.search(r"\btool run\b", run), "pip-audit is run from deploy's locked environment"
    assert "scripts/tools/bootstrap-requirements.txt" in run
    locks = [name for name in committed_files() if Path(name).name in {"uv.lock", "package-lock.json"}]
    assert len(locks) >= 5, locks  # three services, deploy/, scripts/tools/
    assert not [name for name in committed_files() if re.search(r"(poetry|Pipfile|yarn|pnpm-lock)\.lock$", name)]


@pytest.mark.parametrize("path", ["README.md", "deploy/helm/jotc/README.md"])
def test_the_readmes_say_the_workflow_cannot_run_here(path: str) -> None:
    text = (ROOT / path).read_text()
    assert ".github/workflows/ci.yml" in text
    assert "cannot run here" in text
