"""scripts/test (scripts/lib/testrun.py): its leftover check of the temp directory counts what the
run's own processes leave, never what someone else writes to /tmp meanwhile on a shared machine; its
summary names the failed tests; and its plan runs what the docs say it runs (the API's pooled pass,
the fleet alone) with PgBouncer installed for every suite whose tests start one."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import common
from testrun import PGBOUNCER_SERVICES, deploy_suites, failures, needs_pgbouncer, scratch, service_suites

LEAVE_A_FILE = "import tempfile; tempfile.mkstemp(prefix='left-by-the-run-')"
TIDY_UP = "import tempfile\nwith tempfile.TemporaryDirectory(prefix='tidy-'): pass"
POOLED = "JOTC_TEST_POOLER=transaction"
# A test that starts a PgBouncer: jotc_provision.PgBouncer(...) or its context manager pgbouncer(...).
STARTS_PGBOUNCER = re.compile(r"\b(?:PgBouncer|pgbouncer)\(")


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


def test_pgbouncer_is_installed_for_exactly_the_suites_whose_tests_start_one() -> None:
    def starts_one(service: str) -> bool:
        tests = (common.SERVICES / service / "tests").rglob("*.py")
        return any(STARTS_PGBOUNCER.search(path.read_text()) for path in tests)

    starting = {service for service in common.services() if starts_one(service)}
    assert starting == set(PGBOUNCER_SERVICES)
    assert needs_pgbouncer(["db-migrations"])  # alone: its pooled connection's refusal
    assert needs_pgbouncer(["api", "loadtest"])
    assert not needs_pgbouncer(["loadtest"])
    assert not needs_pgbouncer([])  # `scripts/test deploy`: the fleet installs its own


def pooled_runs(service: str, tier: str | None, pytest_args: list[str]) -> list[list[str]]:
    return [command for _, command, _ in service_suites(service, tier, pytest_args) if POOLED in command]


def test_a_plain_api_run_passes_the_integration_tier_a_second_time_through_pgbouncer() -> None:
    (_, whole, _), (pooled_name, pooled, _) = service_suites("api", None, [])
    assert "--cov" in whole
    assert POOLED not in whole
    assert "through PgBouncer" in pooled_name
    assert "tests/integration" in pooled
    assert "--numprocesses" in pooled
    assert pooled_runs("api", "integration", []) == [pooled]


def test_the_pooled_pass_is_left_out_with_pytest_arguments_another_tier_or_another_service() -> None:
    assert pooled_runs("api", None, ["-x"]) == []
    assert pooled_runs("api", "integration", ["-k", "erasure"]) == []
    assert pooled_runs("api", "system", []) == []
    assert pooled_runs("api", "unit", []) == []
    assert pooled_runs("db-migrations", None, []) == []
    assert service_suites("db-migrations", "system", []) == []  # it has no system tier


def test_the_fleet_runs_alone_after_the_rest_of_the_deploy_suite_unless_pytest_arguments_are_given() -> None:
    (_, rest, _), (_, fleet, _) = deploy_suites([])
    assert rest[-2:] == ["-m", "not fleet"]
    assert "--numprocesses" in rest
    assert fleet[-2:] == ["-m", "fleet"]
    assert "--numprocesses" not in fleet
    assert [command[-2:] for _, command, _ in deploy_suites(["-k", "helm"])] == [["-k", "helm"]]
