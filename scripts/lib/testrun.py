"""scripts/test: lint, type-check and test JOTC against real PostgreSQL and Redis, then the deployment
checks; print a summary; exit non-zero on any failure. The work tree and the run's temp directory must
be left as they were found. `scripts/test --help` says how to run one tier, one service or one test.

The temp directory is the run's own: a directory made for it is TMPDIR for this process and every
process it starts, so what the run leaves there is counted, and what other users of the machine
write to /tmp meanwhile is not."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import common
import jotc_provision
from common import ROOT, say

TIERS = ("unit", "integration", "system")
# pytest-xdist processes per suite (PYTEST_WORKERS overrides them all): most tests wait on servers,
# sockets and PostgreSQL rather than compute, so a few more processes than two cores keep them busy.
WORKERS = {"api": 4, "db-migrations": 3, "loadtest": 2, "deploy": 3}
# The unit tiers run side by side; only the API's is large enough to gain from two processes.
UNIT_WORKERS = {"api": 2}
# The services whose tests start a PgBouncer of their own (jotc_provision.PgBouncer, Debian's package):
# the API's pooled pass and system tier, db-migrations' refusal of a pooled connection.
PGBOUNCER_SERVICES = ("api", "db-migrations")

USAGE = """\
usage: scripts/test [--tier TIER] [--throwaway] [--keep-engine] [NAME ...] [-- PYTEST_ARGS ...]

Lints, type-checks and tests JOTC; prints a summary and exits non-zero on any failure.

  (no NAME)      everything: hadolint, each service, deploy, compose, then the leftover check
  NAME           only these: a service (db-migrations, api, loadtest), deploy (Compose config,
                 scripts/dev end to end, the bootstrap, the Helm chart), or compose (the
                 containers in a real Docker engine, deploy/container_tests)
  --tier TIER    only one tier of the services' tests, and no linters:
                   unit         pure logic, in process: no server, database or sleep (seconds)
                   integration  through HTTP in process (Litestar's test client) or jotc-migrate,
                                against real PostgreSQL and Redis
                   system       real servers: Granian processes, signals, faults, Locust
  --throwaway    start private PostgreSQL and Redis even if local ones run
  --keep-engine  compose: a Docker engine the stage starts (none was running) is left running
                 for `docker compose up`; without it, it is stopped at the end, and said so
  -- ARGS        extra arguments for every pytest run (e.g. -- -x -k upgrade): one process each,
                 no coverage floor, no second pass of the API's integration tier through PgBouncer
  -h, --help     this text

One test: scripts/test api -- tests/unit/test_solver.py::test_reference_samples
(the path is relative to the service's directory).

Every process of the run gets a temp directory of its own (TMPDIR); the run fails if anything is
left in it, or in the work tree (git status), at the end.

PostgreSQL: DATABASE_URL if set (a server whose role may create databases: every test makes
its own fresh database and drops it), else 127.0.0.1:5432, else a throwaway server from the
local binaries. Redis likewise with REDIS_URL / 127.0.0.1:6379.

Tools: uv and helm are the pinned ones in .tools/ (installed on first use, scripts/tools/);
JOTC_SYSTEM_TOOLS=1 uses the machine's own uv and helm instead when it has them. Every tool the
tests run is locked in the uv.lock of the suite that runs it.
"""

Suite = tuple[str, list[str], Path]  # a pytest run: its name in the summary, its command, its directory

# Kept by design: the caches and environments that are meant to stay.
KEPT = (".venv", ".tools", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".hypothesis")
# Left in the tests' TMPDIR by design, and gone with it: pytest's last base temp directories, uv's
# lock files, and the grammar cache of lark (python-hcl2, in checkov).
TMP_KEPT = ("pytest-of-", "uv-", ".lark_cache_")


@dataclass
class Run:
    results: list[str] = field(default_factory=list)
    failed: bool = False
    reports: Path | None = None  # where pytest's JUnit XML reports go, so the summary can say why

    def step(self, name: str, action: Callable[[], bool]) -> bool:
        say(name)
        started = time.monotonic()
        ok = action()
        self.record(ok, f"{name} ({time.monotonic() - started:.0f} s)")
        return ok

    def command(self, name: str, command: Sequence[str], cwd: Path = ROOT) -> bool:
        return self.step(name, lambda: subprocess.run(list(command), cwd=cwd, check=False).returncode == 0)

    def suite(self, name: str, command: Sequence[str], cwd: Path) -> bool:
        """A pytest run; when it fails, the summary names each failed test and its message's first
        line (a long log's middle may be all a reader of CI's output gets to see)."""
        if self.reports is None:
            return self.command(name, command, cwd)
        if any(part.startswith("--junitxml") for part in command):  # the caller's own report
            return self.command(name, command, cwd)
        report = self.reports / f"junit-{len(self.results)}.xml"
        ok = self.command(name, [*command, f"--junitxml={report}"], cwd)
        if not ok:
            found = failures(report)
            why = found or ["no test failed: the run's own end failed (a coverage floor, collection, an option)"]
            self.results.extend(f"        {line}" for line in why)
        return ok

    def together(self, jobs: list[tuple[str, list[str], Path]], logs: Path) -> None:
        """Run jobs (name, command, directory) at the same time, each one's output printed whole when
        it ends. Only for the unit tier: nothing in it waits on a clock or a server."""
        logs.mkdir(exist_ok=True)
        running = []
        for number, (name, command, cwd) in enumerate(jobs):
            log = logs / f"{number}.log"
            with log.open("wb") as out:
                running.append((name, subprocess.Popen(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT), log))
        started = time.monotonic()
        while running:
            for entry in [entry for entry in running if entry[1].poll() is not None]:
                name, process, log = entry
                running.remove(entry)
                say(name)
                sys.stdout.write(log.read_text(errors="replace"))
                self.record(process.returncode == 0, f"{name} ({time.monotonic() - started:.0f} s)")
            time.sleep(0.05)  # the poll interval of a wait for processes to end

    def record(self, ok: bool, line: str) -> None:
        self.results.append(f"{'PASS' if ok else 'FAIL'}  {line}")
        self.failed = self.failed or not ok


def failures(report: Path, most: int = 5, width: int = 240) -> list[str]:
    """'test: first line of its message' for each failed or erroring test in a JUnit XML report."""
    try:
        cases = ElementTree.parse(report).getroot().iter("testcase")  # noqa: S314 - pytest's own report
    except (OSError, ElementTree.ParseError):
        return ["(pytest wrote no report: see its output above)"]
    lines = []
    for case in cases:
        for outcome in ("failure", "error"):
            found = case.find(outcome)
            if found is not None:
                message = (found.get("message") or found.text or "").strip().splitlines() or ["?"]
                lines.append(f"{case.get('classname', '')}.{case.get('name', '')}: {message[0]}"[:width])
    return lines[:most] + ([f"... and {len(lines) - most} more"] if len(lines) > most else [])


def parse(argv: list[str]) -> argparse.Namespace:
    extra: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, extra = argv[:at], argv[at + 1 :]
    parser = argparse.ArgumentParser(
        prog="scripts/test", usage=USAGE.splitlines()[0].removeprefix("usage: "), add_help=False
    )
    parser.add_argument("-h", "--help", action="store_true")
    parser.add_argument("--throwaway", action="store_true")
    parser.add_argument("--keep-engine", action="store_true")
    parser.add_argument("--tier", choices=TIERS)
    parser.add_argument("names", nargs="*")
    args = parser.parse_args(argv)
    if args.help:
        print(USAGE, end="")
        raise SystemExit(0)
    args.pytest_args = extra
    known = common.services()
    for name in args.names:
        if name not in (*known, "deploy", "compose"):
            parser.error(f"no service named {name} (services/{name}/pyproject.toml; see scripts/test --help)")
    return args


def workers(default: int) -> str:
    return os.environ.get("PYTEST_WORKERS", str(default))


def pytest_options(tier: str | None, extra: list[str], spread: int | None) -> list[str]:
    """A tier's directory, or the whole suite with its coverage report and floor (fail_under in the
    service's pyproject.toml); spread over that many processes (pytest-xdist), unless the caller
    gave pytest arguments of their own (-x, -k, one test: one process, no floor)."""
    options = [f"tests/{tier}"] if tier else []
    if extra:
        return [*options, *extra]
    if spread:
        options += ["--numprocesses", workers(spread)]
    if tier is None:
        options += ["--cov", "--cov-report=term-missing:skip-covered"]
    return options


def needs_pgbouncer(services: Iterable[str]) -> bool:
    return any(service in PGBOUNCER_SERVICES for service in services)


def service_suites(service: str, tier: str | None, pytest_args: list[str]) -> list[Suite]:
    """A service's pytest runs, in order: the tier asked for (none if the service has no such tier) or
    the whole suite; then, for the API's integration tier when the caller gave no pytest arguments,
    that tier again with every database reached through PgBouncer in transaction mode (the HTTP
    contract, erasure and retention as a fleet runs them; tests/support.py: POOLED)."""
    directory = common.SERVICES / service
    if tier is not None and not (directory / "tests" / tier).is_dir():
        return []
    pytest = ["uv", "run", "--no-sync", "pytest"]
    name = f"{service}: pytest" + (f" ({tier} tier)" if tier else ", with coverage")
    spread = UNIT_WORKERS.get(service) if tier == "unit" else WORKERS.get(service, 2)
    suites = [(name, [*pytest, *pytest_options(tier, pytest_args, spread)], directory)]
    if service == "api" and tier in (None, "integration") and not pytest_args:
        pooled = ["env", "JOTC_TEST_POOLER=transaction", *pytest, *pytest_options("integration", [], WORKERS["api"])]
        suites.append(("api: pytest, integration tier through PgBouncer (transaction mode)", pooled, directory))
    return suites


def deploy_suites(pytest_args: list[str]) -> list[Suite]:
    """The deployment tests: without pytest arguments of the caller's, all but the fleet over a few
    processes, then the fleet alone (tests/test_fleet.py says why); with them, one run as asked."""
    deploy = ROOT / "deploy"
    pytest = ["uv", "run", "--no-sync", "pytest"]
    if pytest_args:
        return [("deploy: pytest", [*pytest, *pytest_args], deploy)]
    rest = [*pytest, "--numprocesses", workers(WORKERS["deploy"]), "-m", "not fleet"]
    return [("deploy: pytest", rest, deploy), ("deploy: pytest, the fleet", [*pytest, "-m", "fleet"], deploy)]


def tree_state() -> set[str]:
    lines = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=all", "--ignored=matching"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.splitlines()
    return {line for line in lines if not any(part in KEPT for part in Path(line[3:]).parts)}


@dataclass(frozen=True)
class Scratch:
    """The run's own directories: `root` for throwaway servers and logs, and `tmp`, the TMPDIR of this
    process and of every process it starts."""

    root: Path
    tmp: Path

    def leftovers(self) -> list[str]:
        """What the run's processes left in their temp directory (less what is kept there by design)."""
        return sorted(path.name for path in self.tmp.iterdir() if not path.name.startswith(TMP_KEPT))


@contextmanager
def scratch() -> Iterator[Scratch]:
    """Made in the system's temp directory, TMPDIR while the block runs, removed with all it holds
    afterwards; TMPDIR is then what it was."""
    previous = os.environ.get("TMPDIR")
    with tempfile.TemporaryDirectory(prefix="jotc.") as made:
        root = Path(made)
        root.chmod(0o755)  # a throwaway PostgreSQL runs as postgres and keeps its data inside
        tmp = root / "tmp"
        tmp.mkdir()
        os.environ["TMPDIR"] = str(tmp)
        tempfile.tempdir = None  # this process's own temporary files follow TMPDIR too
        try:
            yield Scratch(root, tmp)
        finally:
            if previous is None:
                os.environ.pop("TMPDIR", None)
            else:
                os.environ["TMPDIR"] = previous
            tempfile.tempdir = None


def dockerfiles() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*Dockerfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [str(ROOT / line) for line in out.split()]


def main(argv: list[str]) -> int:
    args = parse(argv)
    everything = not args.names
    wanted = set(args.names)
    chosen = [service for service in common.services() if everything or service in wanted]
    deploy_wanted = (everything and args.tier is None) or "deploy" in wanted
    compose_wanted = (everything and args.tier is None) or "compose" in wanted
    needs_servers = args.tier != "unit" and (chosen or deploy_wanted)

    tree_before = tree_state()
    run = Run()
    with ExitStack() as stack:
        own = stack.enter_context(scratch())
        run.reports = own.root / "reports"
        run.reports.mkdir()
        if args.keep_engine:
            os.environ["JOTC_KEEP_ENGINE"] = "1"

        common.use_uv()
        if needs_servers:
            found = stack.enter_context(jotc_provision.servers(throwaway=args.throwaway, scratch=own.root))
            for line in found.said:
                say(line)
            os.environ["DATABASE_URL"], os.environ["REDIS_URL"] = found.database_url, found.redis_url
            if needs_pgbouncer(chosen) and common.debian_tool("pgbouncer", "pgbouncer") is None:
                run.record(False, "pgbouncer: not installed and cannot be (Debian: apt-get install pgbouncer)")
        os.environ["JOTC_MIGRATE"] = common.venv_command("db-migrations", "jotc-migrate")
        os.environ["JOTC_API"] = common.venv_command("api", "jotc-api")

        deploy = ROOT / "deploy"
        deploy_synced = False
        if (chosen and args.tier is None) or deploy_wanted or compose_wanted:
            deploy_synced = run.step("deploy: uv sync --locked (the checks' tools)", lambda: common.sync(deploy))
        if deploy_synced and args.tier is None and (chosen or deploy_wanted) and (files := dockerfiles()):
            run.command(f"hadolint: {' '.join(files)}", [str(deploy / ".venv/bin/hadolint"), *files])

        # Every service's locked environment first, tested or not: the API's tests migrate with
        # db-migrations' command, and the load test's tests run the API.
        synced = []
        if chosen:
            for service in common.services():
                if common.sync(common.SERVICES / service):
                    synced.append(service)
                else:
                    hint = f"is uv.lock up to date? run uv lock in services/{service}"
                    run.record(False, f"{service}: uv sync --locked ({hint})")

        suites: list[Suite] = []  # the test suites, run once everything is linted
        for service in chosen:
            if service not in synced:
                continue
            directory = common.SERVICES / service
            paths = ["src", "tests"]
            if args.tier is None:
                run.command(f"{service}: ruff check", ["uv", "run", "--no-sync", "ruff", "check", *paths], directory)
                run.command(
                    f"{service}: ruff format --check",
                    ["uv", "run", "--no-sync", "ruff", "format", "--check", "--quiet", *paths],
                    directory,
                )
                run.command(
                    f"{service}: mypy --strict src", ["uv", "run", "--no-sync", "mypy", "--strict", "src"], directory
                )
            suites.extend(service_suites(service, args.tier, args.pytest_args))

        if deploy_synced and deploy_wanted:
            common.use_helm()
            # The deployment tests, the container stage and the scripts' own Python, under deploy's rules.
            checked = ["tests", "container_tests", "../scripts/lib", "../scripts/scale"]
            run.command("deploy: ruff check", ["uv", "run", "--no-sync", "ruff", "check", *checked], deploy)
            run.command(
                "deploy: ruff format --check",
                ["uv", "run", "--no-sync", "ruff", "format", "--check", "--quiet", *checked],
                deploy,
            )
            run.command(
                "deploy: mypy --strict (container stage, scripts)",
                ["uv", "run", "--no-sync", "mypy", "--strict", "container_tests", "../scripts/lib"],
                deploy,
            )
            suites.extend(deploy_suites(args.pytest_args))
        # One suite after another: run side by side on two cores, Locust's runs in the load test's
        # tier ended before they began (its run-time timer reads gevent's clock, which a starved
        # process has not updated), and latency-bounded tests lost their meaning.
        if args.tier == "unit" and not args.pytest_args:
            run.together(suites, own.root / "logs")
        else:
            for suite in suites:
                run.suite(*suite)
        if deploy_synced and compose_wanted:
            run.suite(
                "compose: containers in a real Docker engine",
                ["uv", "run", "--no-sync", "pytest", "container_tests", *args.pytest_args],
                deploy,
            )

        def leftovers() -> bool:
            tree = sorted(tree_state() - tree_before)
            tmp = own.leftovers()
            if tree:
                print("new in the work tree (git status) during the run:", *tree, sep="\n  ", file=sys.stderr)
            if tmp:
                print(f"left in the run's TMPDIR ({own.tmp}):", *tmp, sep="\n  ", file=sys.stderr)
            return not (tree or tmp)

        run.step("leftovers: the work tree and the run's temp directory as they were found", leftovers)

    print("\nSummary")
    for line in run.results:
        print(f"  {line}")
    print("scripts/test: FAILED" if run.failed else "scripts/test: all passed")
    return 1 if run.failed else 0


if __name__ == "__main__":
    common.run_script(main)
