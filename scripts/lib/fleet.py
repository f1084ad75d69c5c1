"""scripts/fleet: the fleet in miniature, as processes on 127.0.0.1, put through a rolling restart and
faults under a steady Locust swarm, and judged. This module reads the options (answering --help and
refusing a wrong one before anything is installed), installs what is missing (HAProxy, PgBouncer,
Redis from Debian when root; the services' locked environments), then runs fleet_run.py, which does
the work, with services/db-migrations' interpreter (it needs psycopg). The standard library only:
the machine's python3 runs it."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from types import FrameType

import common
import fleet_report

HERE = Path(__file__).resolve().parent
DESCRIPTION = """\
The fleet in miniature, as processes on this machine (127.0.0.1 only):

  PostgreSQL (DATABASE_URL, else the local server, else a throwaway one) with a fresh database
    migrated to head, dropped afterwards;
  PgBouncer before it, transaction mode, --pool-size server connections (the budget);
  Redis with Sentinel: a master, a replica, three sentinels;
  --instances API instances (jotc-api, one worker each) through PgBouncer (JOTC_DB_POOLER=transaction),
    finding Redis through the sentinels, a rate limit on, X-Forwarded-For believed from 127.0.0.1;
  HAProxy before them: round robin, /readyz checked every 0.5 s, X-Forwarded-For added, no retries;
  Locust, a master and two workers, headless: --users users, each a client address of its own.

Under the steady swarm, in turn (each phase lasts at least --phase-seconds):

  1 baseline
  2 rolling restart: each instance in turn SIGTERMed (it drains), waited for, started, waited for
  3 Redis master killed (SIGKILL): the sentinels promote the replica, the instances follow
  4 PgBouncer restarted on its port
  5 an additive migration (db-migrations' test revision t_expand) applied, instances running
  6 rate-limit probe: one client address sending past its limit through HAProxy

Prints a Markdown report (per phase: requests, answers by status, p50/p99, PostgreSQL server
connections against the budget) and its checks: every request answered 201 has its row, no 500,
nothing unanswered, the rolling restart refused nothing, the budget kept, the rate limit held
within its tolerance. Exits 1 when a check fails, 2 when the fleet could not be brought up."""


def positive(text: str) -> int:
    number = int(text)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text}")
    return number


def seconds(text: str) -> float:
    number = float(text)
    if not 1 <= number <= 600:
        raise argparse.ArgumentTypeError(f"must be 1 to 600 seconds, got {text}")
    return number


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/fleet",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--phase-seconds",
        type=seconds,
        default=20,
        metavar="S",
        help="the baseline's length, and the least any phase lasts (default 20; the whole run about 3 minutes)",
    )
    parser.add_argument("--instances", type=positive, default=4, metavar="N", help="API instances (default 4)")
    parser.add_argument(
        "--users", type=positive, default=60, metavar="N", help="Locust users, each about a request a second (60)"
    )
    parser.add_argument(
        "--pool-size",
        type=positive,
        default=4,
        metavar="N",
        help="PgBouncer's server connections for the database: the fleet's budget (default 4, fewer than the "
        "instances' clients: 2 each)",
    )
    parser.add_argument(
        "--rate-limit",
        type=positive,
        default=150,
        metavar="N",
        help="JOTC_RATE_LIMIT per client address, N/minute (default 150: a Locust user sends about 60)",
    )
    parser.add_argument(
        "--drain-seconds",
        type=float,
        default=3.0,
        metavar="S",
        help="each instance's JOTC_DRAIN_SECONDS (default 3: HAProxy takes a draining instance out within 1 s); "
        "0 shows what the rolling restart does without a drain",
    )
    parser.add_argument(
        "--late-syncs",
        type=float,
        default=fleet_report.LATE_SYNC_SECONDS,
        metavar="S",
        help="how late the limiter's syncs may run on this machine, in the rate-limit check's tolerance "
        f"(default {fleet_report.LATE_SYNC_SECONDS}; the test gives more, as CI's machine is shared)",
    )
    parser.add_argument("--report", type=Path, metavar="FILE", help="also write the Markdown report to FILE")
    parser.add_argument(
        "--throwaway", action="store_true", help="a private PostgreSQL even when DATABASE_URL or a local one is there"
    )
    return parser.parse_args(argv)


# Debian's package of each server binary the fleet starts.
SERVERS = {"haproxy": "haproxy", "pgbouncer": "pgbouncer", "redis-server": "redis-server"}


def missing_servers() -> list[str]:
    return [
        package
        for binary, package in SERVERS.items()
        if shutil.which(binary) is None and not Path("/usr/sbin", binary).exists()
    ]


def _terminated(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    parse_args(argv)  # --help, or a wrong option refused, before anything is installed
    missing = missing_servers()
    if missing:
        if not common.can_install():
            common.die(f"the fleet needs {', '.join(missing)}: apt-get install {' '.join(missing)}")
        common.say(f"installing Debian's {', '.join(missing)}")
        common.apt_install(*missing)
    # Every temporary file of the run goes here, and this goes at exit. Readable by all: a throwaway
    # PostgreSQL and PgBouncer run as postgres when this runs as root.
    with tempfile.TemporaryDirectory(prefix="jotc-fleet.") as directory:
        scratch = Path(directory)
        scratch.chmod(0o755)
        os.environ["TMPDIR"] = str(scratch)
        tempfile.tempdir = None
        common.use_uv()
        for service in ("db-migrations", "api", "loadtest"):
            common.say(f"services/{service}: uv sync --locked")
            if not common.sync(common.SERVICES / service):
                common.die(f"could not install services/{service}")
        python = common.venv_command("db-migrations", "python")
        command = [python, "-B", str(HERE / "fleet_run.py"), *argv]
        run = subprocess.Popen(command, env={**os.environ, "JOTC_FLEET_SCRATCH": str(scratch)})

        def forward(signum: int, _frame: FrameType | None) -> None:
            run.send_signal(signum)

        # The run cleans up after itself: a SIGTERM is passed on, and a terminal's Ctrl-C, which
        # reaches it too, is left to it; this process waits for it to finish either way.
        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        return run.wait()


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminated)
    common.run_script(main)
