"""The Helm chart, rendered: helm itself, `helm template` with each values file of ci/ (installed by
chart-testing in CI) and of examples/ (what a real cluster needs: a registry, CloudNativePG, real
hosts), by its name (cached, renders are pure), picking objects out of the manifests, and strict
schema validation on a Kubernetes minor. Shared by test_helm.py, test_chart_monitoring.py,
test_security.py and test_workflow.py."""

from __future__ import annotations

import copy
import functools
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from support import ROOT

CHART = ROOT / "deploy/helm/jotc"
VALUES_FILES = sorted([*(CHART / "ci").glob("*.yaml"), *(CHART / "examples").glob("*.yaml")])
VALUES = {"default": None, **{path.stem: path for path in VALUES_FILES}}


def helm() -> str:
    found = shutil.which("helm") or str(ROOT / ".tools/helm/helm")
    if not Path(found).exists():
        pytest.exit("helm not found: scripts/test installs it (.tools/helm), or put helm on PATH", returncode=2)
    return found


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm(), *args], capture_output=True, text=True, check=False, timeout=120)


def values_args(name: str) -> list[str]:
    path = VALUES[name]
    return ["-f", str(path)] if path else []


@functools.cache
def rendered_text(name: str, *extra: str) -> str:
    """helm template's output, once per set of arguments for the whole run (renders are pure)."""
    result = run_helm("template", "rel", str(CHART), "--namespace", "jotc", *values_args(name), *extra)
    assert result.returncode == 0, result.stderr
    return result.stdout


@functools.cache
def _parsed(name: str, *extra: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(rendered_text(name, *extra)) if doc]


def render(name: str, *extra: str) -> list[dict[str, Any]]:
    return copy.deepcopy(_parsed(name, *extra))


def find(docs: list[dict[str, Any]], kind: str, name_part: str = "") -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and name_part in d["metadata"]["name"]]


def one(docs: list[dict[str, Any]], kind: str, name_part: str = "") -> dict[str, Any]:
    found = find(docs, kind, name_part)
    assert len(found) == 1, [d["metadata"]["name"] for d in found]
    return found[0]


def invalid_on(minor: int, docs: list[dict[str, Any]]) -> list[str]:
    """Every schema error of these manifests on Kubernetes 1.<minor>, strictly (unknown fields too)."""
    errors = []
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # CRDs of the Prometheus Operator: not in the Kubernetes schemas
        try:
            kubernetes_validate.validate(doc, f"1.{minor}.0", strict=True)
        except kubernetes_validate.ValidationError as error:
            errors.append(f"1.{minor}: {doc['kind']} {doc['metadata']['name']}: {error.message} at {error.path}")
    return errors
