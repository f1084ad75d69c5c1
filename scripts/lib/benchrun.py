"""scripts/bench: install and provision, then run bench.py (the measurements) against a fresh database.
`scripts/bench --help` lists the options (declared in bench.py) and the targets (bench_report.py)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from types import FrameType

import bench
import common
import jotc_provision

BENCH_PY = Path(bench.__file__).resolve()


def _terminated(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    # Options are answered (--help) or refused before anything is installed or started.
    bench.parse_args(argv)
    if shutil.which("wrk") is None:
        common.die("wrk is needed: apt-get install wrk")
    signal.signal(signal.SIGTERM, _terminated)
    # Every temporary file of the run (uv leaves lock files behind, for one) goes here, and this goes
    # at exit. Readable by all: a throwaway PostgreSQL, running as postgres, keeps its data inside.
    with tempfile.TemporaryDirectory(prefix="jotc-bench.") as directory:
        scratch = Path(directory)
        scratch.chmod(0o755)
        os.environ["TMPDIR"] = str(scratch)
        tempfile.tempdir = None
        common.use_uv()
        for service in ("db-migrations", "api"):
            if not common.sync(common.SERVICES / service):
                common.die(f"could not install services/{service}")
        with (
            jotc_provision.servers(scratch=scratch) as found,
            jotc_provision.fresh_database(
                found.database_url,
                prefix="jotc_bench",
                migrate_with=common.venv_command("db-migrations", "jotc-migrate"),
            ) as database_url,
        ):
            # matplotlib is pinned in bench.py's inline metadata, which uv reads.
            command = ["uv", "run", "--quiet", "--script", str(BENCH_PY), *argv]
            return subprocess.run(command, env={**os.environ, "DATABASE_URL": database_url}, check=False).returncode


if __name__ == "__main__":
    common.run_script(main)
