"""The chart's PrometheusRule, rendered, and promtool to check and unit-test it. Shared by
test_chart_monitoring.py (checks, metrics, dashboard) and test_chart_alerts.py (alerts on made-up
series, labels, runbook).

promtool comes from Debian's `prometheus` package, installed as root when missing (as the container
stage installs docker.io); elsewhere the promtool tests are skipped with the reason, and under
CI=true they fail instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart import one, render
from common import apt_install, can_install

MONITORING = ("--set", "api.grafanaDashboard.enabled=true,api.prometheusRule.enabled=true")
# The release's API as its series are labelled: namespace and job from the ServiceMonitor scrape,
# service the API Service.
NAMESPACE = "jotc"
JOB = "rel-jotc-api"
RELEASE_LABELS = {"namespace": NAMESPACE, "job": JOB, "service": JOB}


def rule_groups(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = one(docs, "PrometheusRule")["spec"]["groups"]
    return groups


def rules(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for group in rule_groups(docs) for rule in group["rules"]]


def alerts(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in rules(docs) if "alert" in rule}


def rendered_rules(values: str, *extra: str) -> list[dict[str, Any]]:
    return render(values, *MONITORING, *extra)


def promtool() -> str:
    found = shutil.which("promtool")
    if found:
        return found
    if can_install():
        apt_install("prometheus")  # the scripts' one way to install Debian packages
        found = shutil.which("promtool")
        if found:
            return found
    reason = "promtool not found, and installing Debian's prometheus package needs root and apt-get"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the rules must be checked)", pytrace=False)
    pytest.skip(reason)


def write_rules(docs: list[dict[str, Any]], into: Path, name: str = "rules.yaml") -> Path:
    path = into / name
    path.write_text(yaml.safe_dump({"groups": rule_groups(docs)}, sort_keys=False))
    return path


def run_promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, check=False, timeout=120, cwd=cwd)


def promtool_test(tests: list[dict[str, Any]], rule_files: list[str], cwd: Path) -> None:
    """`promtool test rules` on these test groups (each evaluated every minute)."""
    document = {"rule_files": rule_files, "evaluation_interval": "1m", "tests": tests}
    (cwd / "tests.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    result = run_promtool("test", "rules", "tests.yaml", cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr
