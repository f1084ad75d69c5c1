"""scripts/bench: its usage text, option checks, target verdicts, the CPU budget's arithmetic and the
one-connection trace (against a stub server), --against's copy of a revision and its report, without
running wrk or the API. scripts/lib/bench.py reads the options; bench_measure.py, bench_trace.py and
bench_report.py hold what the tests below reach."""

from __future__ import annotations

import importlib
import importlib.util
import os
import random
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import pytest
from support import ROOT

BENCH = ROOT / "scripts/bench"


@pytest.fixture(scope="module")
def bench() -> Iterator[ModuleType]:
    """scripts/lib/bench.py, loaded by path, and with it the bench_*.py modules it imports; no
    __pycache__ is left beside them."""
    spec = importlib.util.spec_from_file_location("jotc_bench", ROOT / "scripts/lib/bench.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    writes_bytecode = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.dont_write_bytecode = writes_bytecode
        del sys.modules[spec.name]


@pytest.fixture(scope="module")
def measure(bench: ModuleType) -> ModuleType:
    return importlib.import_module("bench_measure")  # imported by bench.py, without bytecode


@pytest.fixture(scope="module")
def report(bench: ModuleType) -> ModuleType:
    return importlib.import_module("bench_report")


@pytest.fixture(scope="module")
def trace(bench: ModuleType) -> ModuleType:
    return importlib.import_module("bench_trace")


@pytest.fixture(scope="module")
def budget(bench: ModuleType) -> ModuleType:
    return importlib.import_module("cpu_budget")


def run_bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BENCH), *args], capture_output=True, text=True, check=False, timeout=60)


def at_limits(report: ModuleType) -> dict[str, float]:
    return {target.key: target.limit for target in report.TARGETS}


def test_a_value_on_the_limit_meets_its_target_and_one_past_it_misses(report: ModuleType) -> None:
    assert all(verdict.met for verdict in report.judge(at_limits(report)))
    for target in report.TARGETS:
        worse = target.limit * (0.99 if target.op == ">=" else 1.01)
        summary = {**at_limits(report), target.key: worse}
        missed = [verdict.target for verdict in report.judge(summary) if not verdict.met]
        assert missed == [target]
        assert report.closing_line(report.judge(summary)).startswith(f"1 of {len(report.TARGETS)} targets missed:")


def test_each_verdict_line_says_met_or_missed_with_the_measured_value(report: ModuleType) -> None:
    ratio = report.Target("ratio", "throughput ratio", ">=", 0.30, "")
    p50 = report.Target("c1_p50_ms", "one connection p50", "<=", 1.5, "ms")
    verdicts = report.judge({"ratio": 0.262, "c1_p50_ms": 1.2}, (ratio, p50))
    assert [verdict.line() for verdict in verdicts] == [
        "MISSED  throughput ratio: 0.262 (target ≥ 0.300)",
        "MET     one connection p50: 1.20 ms (target ≤ 1.50 ms)",
    ]
    assert report.closing_line(verdicts) == "1 of 2 targets missed: throughput ratio"
    assert report.closing_line(verdicts[1:]) == "0 of 1 targets missed: all met"


def test_every_target_is_judged_on_a_median_the_bench_measures(measure: ModuleType, report: ModuleType) -> None:
    runs = {
        "api": [{"rps": 1000.0}, {"rps": 3000.0}, {"rps": 2000.0}],
        "bare": [{"rps": 8000.0}, {"rps": 4000.0}, {"rps": 9000.0}],
        "api_c1": [{"p50_ms": 1.0, "p99_ms": 2.0}, {"p50_ms": 3.0, "p99_ms": 9.0}, {"p50_ms": 2.0, "p99_ms": 4.0}],
    }
    solver = {case[0]: [40.0, 60.0, 50.0] for case in measure.SOLVER_CASES}
    values = report.series(runs, [30.0, 10.0, 20.0], solver)
    summary = report.summarise(values)
    assert {target.key for target in report.TARGETS} <= summary.keys()
    assert values["ratio"] == [1000 / 8000, 3000 / 4000, 2000 / 9000]
    assert summary["ratio"] == 2000 / 8000  # the ratio of the medians, not the median of the ratios
    assert (summary["c1_p50_ms"], summary["c1_p99_ms"], summary["first_request_ms"], summary["solver_ms"]) == (
        2.0,
        4.0,
        20.0,
        50.0,
    )
    assert summary["c1_p99_worst_ms"] == 9.0  # the tail target holds only if it holds in every round


def test_help_is_the_usage_of_the_options_it_takes(bench: ModuleType, report: ModuleType) -> None:
    result = run_bench("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: scripts/bench ")
    usage = result.stdout.split("\n\n", 1)[0]
    documented = re.findall(r"\[(--[a-z-]+)(?: ([A-Z]+))?\]", usage)
    assert {option for option, _ in documented} == {
        "--rounds",
        "--seconds",
        "--connections",
        "--label",
        "--rate-limit",
        "--profile",
        "--trace",
        "--statements",
        "--floor",
        "--against",
        "--pooler",
        "--results",
    }
    samples = {"N": "2", "S": "3", "C": "8", "TEXT": "x", "LIMIT": "10/second", "DIR": "out", "REV": "HEAD"}
    for option, metavar in documented:
        bench.parse_args([option, samples[metavar]] if metavar else [option])  # every documented option is taken
    for target in report.TARGETS:
        assert f"{target.what} {target.describe()}" in result.stdout
    assert "exit status is 0 whether they are met or not" in " ".join(result.stdout.split())


def test_a_wrong_option_is_refused_before_anything_starts() -> None:
    for args in (["--rounds", "0"], ["--bogus"], ["--label", "a/b"], ["--trace", "--against", "HEAD"]):
        result = run_bench(*args)
        assert result.returncode == 2, args
        assert "usage: scripts/bench" in result.stderr
        assert "==>" not in result.stderr  # nothing installed, provisioned or started


def test_cpu_per_request_is_reported_as_a_median_when_measured(measure: ModuleType, report: ModuleType) -> None:
    runs = {
        "api": [
            {"rps": 1000.0, "api_cpu_us": 300.0, "pg_cpu_us": 60.0},
            {"rps": 3000.0, "api_cpu_us": 200.0, "pg_cpu_us": 80.0},
            {"rps": 2000.0, "api_cpu_us": 250.0, "pg_cpu_us": 70.0},
        ],
        "bare": [{"rps": 8000.0}] * 3,
        "api_c1": [{"p50_ms": 1.0, "p99_ms": 2.0}] * 3,
    }
    solver = {case[0]: [50.0] for case in measure.SOLVER_CASES}
    summary = report.summarise(report.series(runs, [20.0] * 3, solver))
    assert (summary["api_cpu_us"], summary["pg_cpu_us"]) == (250.0, 70.0)


def test_cpu_is_read_for_a_process_and_its_children(measure: ModuleType) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in measure.process_tree(os.getpid()), "a child process is not in its parent's tree"
        spent = measure.cpu_seconds([os.getpid()])
        deadline = time.process_time() + 0.2
        while time.process_time() < deadline:  # burn 0.2 s of CPU: what the counter must see
            pass
        assert measure.cpu_seconds([os.getpid()]) - spent >= 0.1, "/proc's CPU counters did not move"
    finally:
        child.kill()
        child.wait()


def test_cpu_spent_leaves_out_a_process_that_exited_and_counts_one_that_started(measure: ModuleType) -> None:
    # A backend of another client ends during the run: its CPU is not the bench's, and must not
    # come out negative either.
    before = {10: 5.0, 11: 40.0}
    after = {10: 5.5, 12: 0.25}
    assert measure.cpu_spent(before, after) == 0.75
    assert measure.process_cpu([os.getpid(), 2**22 + 1]).keys() == {os.getpid()}  # the second is no process


def test_cpu_is_read_for_each_thread_apart(measure: ModuleType) -> None:
    # One thread burns CPU while the main thread sleeps: the budget splits the process's CPU by
    # thread, so the sleeping thread must not be charged with what the busy one spent.
    script = (
        "import threading, time\n"
        "def burn():\n"
        "    deadline = time.thread_time() + 0.4\n"
        "    while time.thread_time() < deadline: pass\n"
        "    time.sleep(30)\n"
        "threading.Thread(target=burn, daemon=True).start()\n"
        "time.sleep(30)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 20
        while (threads := measure.thread_cpu(child.pid)) and max(threads.values()) < 0.3:
            assert time.monotonic() < deadline, f"the burning thread never showed its CPU: {threads}"
            time.sleep(0.05)
        assert len(threads) == 2, threads
        assert threads[child.pid] < 0.2, f"the sleeping main thread is charged with the other's CPU: {threads}"
    finally:
        child.kill()
        child.wait()


def test_a_profile_sample_belongs_to_its_innermost_known_frame(budget: ModuleType) -> None:
    loop = "_run_once (/usr/lib/python3.11/asyncio/base_events.py:1922)"
    pipeline = "pipeline (/app/.venv/lib/python3.11/site-packages/jotc_api/pipeline.py:140)"
    recorder = "insert_rows (/app/src/jotc_api/recorder.py:227)"
    psycopg = "execute (/app/.venv/lib/python3.11/site-packages/psycopg/cursor_async.py:97)"
    uuid = "uuid4 (/usr/lib/python3.11/uuid.py:723)"
    assert budget.category([loop, pipeline, recorder, psycopg, loop]) == "recorder, SQLAlchemy and psycopg"
    assert budget.category([loop, pipeline, uuid]) == "the route, pipeline and transport (jotc_api)"
    assert budget.category([loop]) == budget.EVENT_LOOP
    # py-spy names site-packages files relatively; Granian's native calls show on our awaiting line.
    assert budget.category(["_spawn_asgi_lifespan_worker (granian/server/mp.py:249)"]) == "Granian's ASGI glue"
    awaiting = "response_pipeline.<locals>.pipeline.<locals>.send_through (jotc_api/pipeline.py:154)"
    assert budget.category([loop, pipeline, awaiting]) == budget.SERVER_CALLS
    raw = f"{loop};{pipeline};{recorder};{psycopg} 30\n{loop};{pipeline};{uuid} 10\n{loop} 60\n"
    assert budget.samples(raw) == {
        "recorder, SQLAlchemy and psycopg": 30,
        "the route, pipeline and transport (jotc_api)": 10,
        budget.EVENT_LOOP: 60,
    }


def test_the_budget_shares_the_python_threads_cpu_by_samples_and_adds_the_others(budget: ModuleType) -> None:
    sampled = Counter({"solving": 25, budget.EVENT_LOOP: 75})
    # 4 s of the Python thread and 1 s of Granian's threads over 10,000 requests: 500 µs each.
    rows = budget.budget(sampled, python_cpu=4.0, other_cpu=1.0, requests=10_000)
    micros = {name: round(us) for name, _, us in rows}
    assert micros == {budget.EVENT_LOOP: 300, budget.RUST_THREADS: 100, "solving": 100, "total": 500}
    assert [name for name, _, _ in rows][-1] == "total"
    assert "| solving | 20% | 100 |" in budget.markdown(rows, "scripts/bench --profile")


def test_two_budgets_are_compared_category_by_category_largest_cut_first(budget: ModuleType) -> None:
    before = budget.budget(Counter({"solving": 50, budget.EVENT_LOOP: 50}), 4.0, 1.0, 10_000)
    after = budget.budget(Counter({"solving": 25, budget.EVENT_LOOP: 75}), 2.0, 1.0, 10_000)
    table = budget.compare_markdown(before, after, "scripts/bench --profile --against X")
    rows = [line for line in table.splitlines() if line.startswith("| ") and "spent on" not in line]
    assert rows == [
        "| solving | 200 | 50 | -150 |",
        f"| {budget.EVENT_LOOP} | 200 | 150 | -50 |",
        f"| {budget.RUST_THREADS} | 100 | 100 | +0 |",
        "| total | 500 | 300 | -200 |",
    ]
    assert "`scripts/bench --profile --against X`" in table


def test_sampled_runs_add_up_and_a_profile_may_be_taken_against_a_revision(
    bench: ModuleType, measure: ModuleType, report: ModuleType
) -> None:
    one = measure.Sampled(Counter({"solving": 2}), 1.0, 0.5, 100, 2)
    both = one.plus(measure.Sampled(Counter({"solving": 1, "metrics": 1}), 2.0, 0.5, 300, 2))
    assert both == measure.Sampled(Counter({"solving": 3, "metrics": 1}), 3.0, 1.0, 400, 4)
    assert (one.rps, both.rps) == (50, 100)
    args = bench.parse_args(["--profile", "--against", "HEAD", "--rounds", "2", "--seconds", "5"])
    assert report.profile_command(args).startswith("scripts/bench --profile --seconds 5 --connections ")
    assert report.profile_command(args).endswith(" --against HEAD --rounds 2")
    assert list(measure.alternating(3)) == [
        (0, "before"),
        (0, "after"),
        (1, "after"),
        (1, "before"),
        (2, "before"),
        (2, "after"),
    ]
    assert list(measure.alternating(2, ("a", "b", "c"))) == [(0, "a"), (0, "b"), (0, "c"), (1, "c"), (1, "b"), (1, "a")]


def test_the_trace_times_every_request_of_one_connection_and_names_the_slow_ones(trace: ModuleType) -> None:
    class Created(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the trace's one connection
        answered = 0

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            Created.answered += 1
            if Created.answered == 3:
                time.sleep(0.01)  # one stall of 10 ms
            self.send_response(201)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Created)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        timed = trace.one_connection_trace(server.server_address[1], 0.3)
    finally:
        server.shutdown()
    assert len(timed) == Created.answered >= 3  # the stalled one is the third: a slow machine sends no fewer
    assert [at for at, _ in timed] == sorted(at for at, _ in timed)
    assert timed[2][1] >= 10, "the stalled request's latency"
    said = trace.describe_trace([(0.1, 1.0), (1.25, 7.5), (2.0, 1.2)])
    assert said.startswith("3 requests on one connection: p50 1.20 ms")
    assert "1 above 3 ms:" in said
    assert "at   1.250 s: 7.50 ms" in said


def test_against_takes_the_api_code_of_a_revision_without_touching_the_repository(
    measure: ModuleType, tmp_path: Path
) -> None:
    status = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=True)
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True, text=True, check=True)
    source = measure.extract_source("HEAD", tmp_path)
    assert (source / "jotc_api/__init__.py").read_bytes() == subprocess.run(
        ["git", "show", "HEAD:services/api/src/jotc_api/__init__.py"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    assert subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout == (
        status.stdout
    )
    assert subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True, text=True).stdout == (
        worktrees.stdout
    )
    for wrong in ("no-such-revision", "--output=/tmp/x"):
        with pytest.raises(SystemExit, match=f"{wrong!r} names no commit"):
            measure.extract_source(wrong, tmp_path / "elsewhere")


def test_against_reports_medians_before_and_after_and_their_ratio(bench: ModuleType, report: ModuleType) -> None:
    def round_(rps: float, cpu: float) -> dict[str, float]:
        return {"rps": rps, "api_cpu_us": cpu, "pg_cpu_us": 50, "c1_p50_ms": 1.5, "c1_p99_ms": 3.0, "non_2xx": 0}

    runs = {
        "before": [round_(1000, 300), round_(900, 320), round_(1100, 280)],
        "after": [round_(1200, 250), round_(2000, 200), round_(1000, 260)],
    }
    args = bench.parse_args(["--against", "abc123", "--rounds", "3", "--seconds", "4"])
    said = report.against_markdown(args, runs)
    assert "| POST /jumps, durable (req/s) | 1000 | 1200 | 1.200 |" in said
    assert "| CPU per request, the API's processes (µs) | 300 | 250 | 0.833 |" in said
    assert "`scripts/bench --against abc123 --rounds 3 --seconds 4`" in said
    assert "| 2 | 900 | 320 | 2000 | 200 |" in said


def test_the_floor_reports_each_servers_medians(bench: ModuleType, report: ModuleType) -> None:
    def round_(rps: float, cpu: float, p50: float) -> dict[str, float]:
        return {"rps": rps, "api_cpu_us": cpu, "c1_p50_ms": p50, "non_2xx": 0}

    runs = {
        "bare": [round_(30000, 50, 0.15), round_(28000, 60, 0.20), round_(29000, 55, 0.10)],
        "waiting": [round_(18000, 70, 1.0), round_(17000, 75, 1.1), round_(19000, 65, 0.9)],
        "api": [round_(7000, 180, 1.2), round_(7500, 170, 1.3), round_(6500, 190, 1.25)],
    }
    args = bench.parse_args(["--floor", "--rounds", "3", "--seconds", "5"])
    said = report.floor_markdown(args, runs)
    assert "| bare ASGI app, answering at once | 29000 | 55 | 0.15 |" in said
    assert "(a pause, no database) | 18000 | 70 | 1.00 |" in said
    assert "| POST /jumps, durable | 7000 | 180 | 1.25 |" in said
    assert "`scripts/bench --floor --rounds 3 --seconds 5 --connections 64`" in said
    assert "Not every answer" not in said
    runs["waiting"][1]["non_2xx"] = 120  # its lifespan never ran: every answer a 500
    assert "Not every answer was a 2xx (waiting 120)" in report.floor_markdown(args, runs)


def test_the_trace_names_a_periodic_stall_and_not_chance(trace: ModuleType) -> None:
    rng = random.Random(7)  # noqa: S311 - made-up latencies, not secrets
    every_512_ms = [0.229 + 0.512 * k + rng.uniform(-0.004, 0.004) for k in range(30)]
    every_second = [0.18 + 1.053 * k + rng.uniform(-0.003, 0.003) for k in range(15)]
    stray = [rng.uniform(0, 16) for _ in range(10)]
    found = trace.beats(every_512_ms + every_second + stray)
    assert [round(period, 2) for period, _ in found] == [0.51, 1.05]
    assert found[0][1] >= 30
    assert found[1][1] >= 13  # one may fall on the first beat too, and be counted there
    for size in (10, 20, 40, 100):  # answers slow at random: no beat
        assert trace.beats([rng.uniform(0, 20) for _ in range(size)]) == [], size
    said = trace.describe_trace([(at, 4.0) for at in sorted(every_512_ms)] + [(0.5, 1.0)])
    assert re.search(r"a beat: 30 of the 30 fall every 51[12]\.\d ms", said), said
