"""The chart's metrics sidecar run as a real process: its script, taken from the rendered chart, serves
/metrics and stops at once on SIGTERM and SIGINT, as its container's PID 1.

PID 1 of a PID namespace gets no default action for a signal it has no handler for: SIGTERM from
the kubelet is ignored, and the pod waits out its whole grace period before being killed. Where
this machine allows it (root, or user namespaces), the script runs as PID 1 of a namespace of its
own (`unshare --pid`), exactly that situation. Elsewhere it runs as an ordinary process, which
SIGTERM would kill by default: the test then still tells a handler from none, because only a
handler exits with status 0 (the default death is status -15).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
from chart import one, render
from jotc_provision import free_port, wait_until
from support import ROOT

# The API image's environment, which the sidecar's `python` is: prometheus_client included.
API_PYTHON = ROOT / "services/api/.venv/bin/python"
PID_ONE = ["unshare", "--pid", "--fork", "--kill-child"]
STOP_WITHIN_SECONDS = 10  # the script stops in milliseconds; only a missing handler takes longer


def sidecar_script() -> str:
    pod = one(render("default", "--set", "api.metrics.port=9464"), "Deployment", "-api")["spec"]["template"]["spec"]
    sidecar = next(c for c in pod["containers"] if c["name"] == "metrics")
    assert sidecar["command"][:2] == ["python", "-c"], sidecar["command"]
    script: str = sidecar["command"][2]
    return script


def as_pid_one() -> list[str]:
    """The prefix that runs a command as PID 1 of a new PID namespace, or [] where this machine
    does not allow it."""
    if shutil.which("unshare") is None:
        return []
    for prefix in (PID_ONE, [*PID_ONE, "--map-root-user"]):
        if subprocess.run([*prefix, "true"], capture_output=True, check=False, timeout=30).returncode == 0:
            return prefix
    return []


def target(process: subprocess.Popen[bytes], namespaced: bool) -> int:
    """The script's own process: under unshare, unshare's child (PID 1 inside the namespace)."""
    if not namespaced:
        return process.pid

    def child() -> int | None:
        found = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        return int(found[0]) if found else None

    return wait_until(child, timeout=30, what="unshare's child process")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_the_metrics_sidecar_serves_then_stops_at_once_on_a_signal(tmp_path: Path, signum: signal.Signals) -> None:
    if not API_PYTHON.exists():
        reason = f"{API_PYTHON} is missing: run `uv sync` in services/api (scripts/test does)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    port = free_port()
    prefix = as_pid_one()
    env = {**os.environ, "METRICS_PORT": str(port), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    process = subprocess.Popen([*prefix, str(API_PYTHON), "-c", sidecar_script()], env=env)
    try:

        def served() -> httpx.Response | None:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
            except httpx.TransportError:
                assert process.poll() is None, f"the sidecar exited with {process.returncode} before serving"
                return None

        answer = wait_until(served, timeout=60, what="the sidecar serving /metrics")
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/plain")
        os.kill(target(process, bool(prefix)), signum)
        try:
            status = process.wait(timeout=STOP_WITHIN_SECONDS)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {STOP_WITHIN_SECONDS} s after {signum.name}: the signal is ignored")
        assert status == 0, f"{signum.name} ended the sidecar with status {status}, not by its own handler"
    finally:
        if process.poll() is None:
            process.kill()  # under unshare --kill-child, its child goes with it
            process.wait(timeout=30)
