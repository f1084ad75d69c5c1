"""What the load test's tests share that is not a fixture: the admin token the API is started
with, running jotc-loadtest headless, and the environment for commands of the sibling services.
Generic provisioning (ports, waiting, databases, servers) is scripts/lib/jotc_provision.py."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

ADMIN_TOKEN = "loadtest-admin-token-of-32-characters-or-more"  # pragma: allowlist secret
JOTC_LOADTEST = str(Path(sys.executable).with_name("jotc-loadtest"))
# Set while coverage measures this suite's subprocesses; a sibling service's command (the API,
# jotc-migrate) must not be measured against this package's configuration.
COVERAGE_VARIABLES = ("COVERAGE_PROCESS_CONFIG", "COVERAGE_PROCESS_START")
# Turns off Locust's gevent patching: only for importing the locustfile into the tests' process.
SKIP_MONKEY_PATCH = "LOCUST_SKIP_MONKEY_PATCH"


def sibling_env(env: Mapping[str, str]) -> dict[str, str]:
    """env for a command of another service: without this suite's coverage settings."""
    return {key: value for key, value in env.items() if key not in COVERAGE_VARIABLES}


def run_loadtest(target: str, workdir: Path, seconds: int, **env: str) -> subprocess.CompletedProcess[str]:
    """jotc-loadtest headless against target for `seconds`, its reports in workdir/reports."""
    inherited = {key: value for key, value in os.environ.items() if key != SKIP_MONKEY_PATCH}
    return subprocess.run(
        [JOTC_LOADTEST],
        env={
            **inherited,
            "LOCUST_ROLE": "headless",
            "JOTC_TARGET": target,
            "LOCUST_USERS": "8",
            "LOCUST_SPAWN_RATE": "8",
            "LOCUST_RUN_TIME": f"{seconds}s",
            "JOTC_REPORT_DIR": str(workdir / "reports"),
            **env,
        },
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
    )


def output_of(result: subprocess.CompletedProcess[str], tail: int = 3000) -> str:
    """The end of a run's stdout and stderr, for a failure message."""
    return f"exit {result.returncode}\n--- stdout\n{result.stdout[-tail:]}\n--- stderr\n{result.stderr[-tail:]}"


def assert_mix(shares: dict[str, float], weights: Mapping[str, int], tolerance: float = 0.015) -> None:
    """Each weighted task's share of the picks is within `tolerance` of its weight's share, and no
    task with weight 0 was picked."""
    total = sum(weights.values())
    expected = {task: weight / total for task, weight in weights.items() if weight}
    assert set(shares) == set(expected), f"tasks picked {sorted(shares)}, weighted {sorted(expected)}"
    for task, share in expected.items():
        assert abs(shares[task] - share) <= tolerance, f"{task}: {shares[task]:.3f} of picks, weight says {share:.3f}"
