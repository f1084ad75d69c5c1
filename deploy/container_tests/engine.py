"""A Docker engine for the container stage: the one running, or one started here when we can.

Facts this relies on (Debian 12, root): Debian's `docker.io` package carries dockerd; started in
the background with its defaults it keeps its images under /var/lib/docker, outside the clone, so
images stay cached between runs. Nothing here configures the engine beyond starting it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ENGINE_START_SECONDS = 90


class EngineUnavailableError(Exception):
    """No engine, and none can be started here; the message says why in one line."""


def run(
    *command: str,
    timeout: float = 600,
    check: bool = True,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure raise with its output so a failing test says what broke."""
    result = subprocess.run(
        list(command), capture_output=True, text=True, timeout=timeout, check=False, env=env, cwd=cwd, input=stdin
    )
    if check and result.returncode != 0:
        raise RuntimeError(
            f"`{' '.join(command)}` exited {result.returncode}\n--- stdout\n{result.stdout[-6000:]}"
            f"\n--- stderr\n{result.stderr[-6000:]}"
        )
    return result


def docker_cli() -> str | None:
    return shutil.which("docker")


def answers(cli: str) -> bool:
    return run(cli, "info", "--format", "{{.ServerVersion}}", timeout=20, check=False).returncode == 0


def apt_install(*packages: str) -> None:
    """Debian packages, as root: the container stage's only install step outside the project's files."""
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # One apt-get at a time across the test processes (pytest-xdist): apt refuses to run beside itself.
    with open("/var/lib/apt/lists/jotc-tests.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        run("apt-get", "update", "-qq", timeout=600, env=environment)
        run("apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages, timeout=900, env=environment)


def can_install() -> bool:
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


@dataclass
class Engine:
    """The engine the tests talk to; `stop()` ends it only if this run started it."""

    cli: str
    started: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    notes: list[str] = field(default_factory=list)

    def stop(self) -> None:
        if self.started is None:
            return
        self.started.terminate()
        try:
            self.started.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.started.kill()
            self.started.wait()
        self.started = None
        if self.log is not None:
            shutil.rmtree(self.log.parent, ignore_errors=True)


def ensure_engine() -> Engine:
    """The running engine, else dockerd started by hand (installing Debian's docker.io if needed)."""
    cli = docker_cli()
    if cli is not None and answers(cli):
        return Engine(cli=cli, notes=["using the Docker engine already running"])
    notes: list[str] = []
    if shutil.which("dockerd") is None or cli is None:
        if not can_install():
            raise EngineUnavailableError("no Docker engine answers, and installing docker.io needs root on Debian")
        apt_install("docker.io")
        notes.append("installed Debian's docker.io")
        cli = docker_cli()
    dockerd = shutil.which("dockerd")
    if cli is None or dockerd is None:
        raise EngineUnavailableError("docker.io installed but no docker/dockerd on PATH")
    if os.geteuid() != 0:
        raise EngineUnavailableError("no Docker engine answers, and starting dockerd needs root")
    log_dir = Path(tempfile.mkdtemp(prefix="jotc-dockerd-"))
    log = log_dir / "dockerd.log"
    with log.open("wb") as sink:
        process = subprocess.Popen([dockerd], stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + ENGINE_START_SECONDS
    while not answers(cli):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            tail = log.read_text(errors="replace")[-3000:]
            shutil.rmtree(log_dir, ignore_errors=True)
            raise EngineUnavailableError(f"dockerd did not come up within {ENGINE_START_SECONDS} s:\n{tail}")
        time.sleep(0.5)
    notes.append("started dockerd for this run (stopped at the end)")
    return Engine(cli=cli, started=process, log=log, notes=notes)
