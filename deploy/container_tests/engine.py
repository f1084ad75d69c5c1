"""A Docker engine for the container stage: the one running, or one started here when we can.

Facts this relies on (Debian 12, root): Debian's `docker.io` package carries dockerd; started in
the background with its defaults it keeps its images under /var/lib/docker, outside the clone, so
images stay cached between runs. Nothing here configures the engine beyond starting it.

An engine this run started is stopped at its end, unless JOTC_KEEP_ENGINE=1 (`scripts/test compose
--keep-engine`): then it is left running for `docker compose up`, its log in /var/log. Either way the
stage's report says which, and how to start or stop one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import apt_install, can_install, run

ENGINE_START_SECONDS = 90
KEPT_LOG = Path("/var/log/jotc-dockerd.log")


class EngineUnavailableError(Exception):
    """No engine, and none can be started here; the message says why in one line."""


def docker_cli() -> str | None:
    return shutil.which("docker")


def answers(cli: str) -> bool:
    return run(cli, "info", "--format", "{{.ServerVersion}}", timeout=20, check=False).returncode == 0


def keep_engine() -> bool:
    return os.environ.get("JOTC_KEEP_ENGINE") == "1"


@dataclass
class Engine:
    """The engine the tests talk to; `stop()` ends it only if this run started it and is not to keep
    it, and says in `notes` what became of it."""

    cli: str
    started: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    notes: list[str] = field(default_factory=list)

    def stop(self) -> None:
        if self.started is None:
            return
        if keep_engine():
            pid = self.started.pid
            self.notes.append(f"left the dockerd this run started running (--keep-engine): stop it with kill {pid}")
            self.notes.append(f"its log: {self.log}")
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
        self.notes.append("stopped the dockerd this run started: `docker compose up` now finds no engine")
        self.notes.append(
            "start one (systemctl start docker, or dockerd as root), or leave this one running next time: "
            "scripts/test compose --keep-engine"
        )


def ensure_engine() -> Engine:
    """The running engine, else dockerd started by hand (installing Debian's docker.io if needed)."""
    cli = docker_cli()
    if cli is not None and answers(cli):
        return Engine(cli=cli, notes=["using the Docker engine already running (left running)"])
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
    # A kept engine outlives the run: its log is not in the run's TMPDIR, and neither are its own
    # temporary files (the engine is given no TMPDIR, whether kept or not).
    log = KEPT_LOG if keep_engine() else Path(tempfile.mkdtemp(prefix="jotc-dockerd-")) / "dockerd.log"
    environment = {name: value for name, value in os.environ.items() if name != "TMPDIR"}
    with log.open("ab") as sink:
        process = subprocess.Popen(
            [dockerd], stdout=sink, stderr=subprocess.STDOUT, start_new_session=True, env=environment
        )
    deadline = time.monotonic() + ENGINE_START_SECONDS
    while not answers(cli):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            tail = log.read_text(errors="replace")[-3000:]
            if not keep_engine():
                shutil.rmtree(log.parent, ignore_errors=True)
            raise EngineUnavailableError(f"dockerd did not come up within {ENGINE_START_SECONDS} s:\n{tail}")
        time.sleep(0.5)
    notes.append("started dockerd for this run")
    return Engine(cli=cli, started=process, log=log, notes=notes)
