"""scripts/test's leftover check of the temp directory (scripts/lib/testrun.py): it counts what the
run's own processes leave, never what someone else writes to /tmp meanwhile on a shared machine."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from testrun import failures, scratch

LEAVE_A_FILE = "import tempfile; tempfile.mkstemp(prefix='left-by-the-run-')"
TIDY_UP = "import tempfile\nwith tempfile.TemporaryDirectory(prefix='tidy-'): pass"


def test_a_file_someone_else_writes_to_tmp_meanwhile_does_not_count() -> None:
    someone_elses = Path("/tmp") / f"someone-elses-{uuid.uuid4().hex}"
    try:
        with scratch() as run:
            someone_elses.write_text("another user of the machine, during the run")
            subprocess.run([sys.executable, "-c", TIDY_UP], check=True)
            assert run.leftovers() == []
    finally:
        someone_elses.unlink(missing_ok=True)


def test_a_file_a_process_of_the_run_leaves_counts_and_the_directory_goes_at_the_end() -> None:
    before = os.environ.get("TMPDIR")
    with scratch() as run:
        assert os.environ["TMPDIR"] == str(run.tmp) == tempfile.gettempdir()
        subprocess.run([sys.executable, "-c", LEAVE_A_FILE], check=True)  # inherits the run's TMPDIR
        (left,) = run.leftovers()
        assert left.startswith("left-by-the-run-")
    assert not run.root.exists()
    assert os.environ.get("TMPDIR") == before


def test_the_summary_names_each_failed_test_and_its_messages_first_line(tmp_path: Path) -> None:
    (tmp_path / "test_made_up.py").write_text(
        "def test_passes():\n    pass\n\n"
        "def test_fails():\n    assert 1 == 2, 'scripts/fleet exited 1: rate limit held\\nlong log'\n"
    )
    report = tmp_path / "report.xml"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 1, done.stdout
    assert failures(report) == ["test_made_up.test_fails: AssertionError: scripts/fleet exited 1: rate limit held"]
    assert failures(tmp_path / "absent.xml") == ["(pytest wrote no report: see its output above)"]
