"""checkov over the rendered chart (every values file) and the Dockerfiles: no finding outside the
committed, justified skip list (deploy/checkov-skips.yaml)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart import CHART, VALUES, run_helm, values_args
from support import ROOT, committed_files, venv_tool

SKIPS: dict[str, dict[str, str]] = yaml.safe_load((ROOT / "deploy/checkov-skips.yaml").read_text())


def checkov(*args: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        [
            venv_tool("checkov"),
            "--quiet",
            "--compact",
            "-o",
            "json",
            *args,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.stdout.strip(), result.stderr[-2000:]
    report = json.loads(result.stdout)
    reports: list[dict[str, Any]] = report if isinstance(report, list) else [report]
    return reports


def failures(reports: list[dict[str, Any]], allowed: dict[str, str]) -> list[str]:
    return [
        f"{check['check_id']} {check['check_name']} — {check['resource']} ({check.get('file_path', '')})"
        for report in reports
        for check in report.get("results", {}).get("failed_checks", [])
        if check["check_id"] not in allowed
    ]


def test_every_skip_is_justified() -> None:
    for framework in ("kubernetes", "dockerfile"):
        for check, reason in SKIPS[framework].items():
            assert re.fullmatch(r"CKV2?_[A-Z0-9]+_\d+", check)
            assert len(reason.split()) >= 8, f"{check} needs a reason"


def test_rendered_chart_has_no_unjustified_finding(tmp_path: Path) -> None:
    for name in VALUES:
        result = run_helm("template", "rel", str(CHART), *values_args(name))
        assert result.returncode == 0, result.stderr
        (tmp_path / f"{name}.yaml").write_text(result.stdout)
    found = failures(checkov("-d", str(tmp_path), "--framework", "kubernetes"), SKIPS["kubernetes"])
    assert found == [], "\n".join(found)


def test_dockerfiles_have_no_unjustified_finding() -> None:
    dockerfiles = sorted(str(path) for path in (ROOT / "services").glob("*/Dockerfile"))
    assert len(dockerfiles) == 3
    arguments = [item for path in dockerfiles for item in ("-f", path)]
    found = failures(checkov(*arguments, "--framework", "dockerfile"), SKIPS["dockerfile"])
    assert found == [], "\n".join(found)


@pytest.mark.parametrize("framework", ["kubernetes", "dockerfile"])
def test_a_finding_outside_the_list_would_fail(framework: str) -> None:
    """The check can fail: without its skip list, checkov does report findings here."""
    fake = {"results": {"failed_checks": [{"check_id": "CKV_FAKE_1", "check_name": "x", "resource": "r"}]}}
    assert failures([fake], SKIPS[framework]) != []


def secrets_found(*files: str, cwd: Path = ROOT) -> set[tuple[str, str]]:
    """(file, hashed secret) of every finding of detect-secrets in these files."""
    result = subprocess.run(
        [venv_tool("detect-secrets"), "scan", *files],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return findings(json.loads(result.stdout))


def findings(report: dict[str, Any]) -> set[tuple[str, str]]:
    return {(name, item["hashed_secret"]) for name, items in report["results"].items() for item in items}


def test_no_secret_beyond_the_audited_baseline() -> None:
    """Every tracked file (image contents included: each image is built from its service folder)
    is scanned; every finding must be one of the audited placeholders in .secrets.baseline (example
    URLs, key names, test tokens), matched by file and secret, so an edit that only moves a
    baselined line does not fail the run. A new finding: audit it, then `detect-secrets scan
    --baseline .secrets.baseline` and commit the baseline, or mark the line `pragma: allowlist secret`."""
    files = [name for name in committed_files() if not name.endswith("uv.lock") and name != ".secrets.baseline"]
    baseline = findings(json.loads((ROOT / ".secrets.baseline").read_text()))
    assert secrets_found(*files) - baseline == set()


def test_the_secret_scan_can_fail(tmp_path: Path) -> None:
    leaked = tmp_path / "leak.py"
    # Assembled at run time, so this file itself holds nothing a scanner would flag.
    key = "AKIA" + "IOSFODNN7" + "EXAMPLE"
    leaked.write_text(f'aws_access_key_id = "{key}"\n')
    baseline = findings(json.loads((ROOT / ".secrets.baseline").read_text()))
    assert secrets_found(leaked.name, cwd=tmp_path) - baseline != set()
