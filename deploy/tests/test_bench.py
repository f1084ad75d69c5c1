"""scripts/bench: its usage text, option checks and target verdicts, without running wrk or the API."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from types import ModuleType

import pytest
from support import ROOT

BENCH = ROOT / "scripts/bench"


@pytest.fixture(scope="module")
def bench() -> Iterator[ModuleType]:
    """scripts/lib/bench.py, loaded by path; no __pycache__ is left beside it."""
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


def run_bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BENCH), *args], capture_output=True, text=True, check=False, timeout=60)


def at_limits(bench: ModuleType) -> dict[str, float]:
    return {target.key: target.limit for target in bench.TARGETS}


def test_a_value_on_the_limit_meets_its_target_and_one_past_it_misses(bench: ModuleType) -> None:
    assert all(verdict.met for verdict in bench.judge(at_limits(bench)))
    for target in bench.TARGETS:
        worse = target.limit * (0.99 if target.op == ">=" else 1.01)
        summary = {**at_limits(bench), target.key: worse}
        missed = [verdict.target for verdict in bench.judge(summary) if not verdict.met]
        assert missed == [target]
        assert bench.closing_line(bench.judge(summary)).startswith(f"1 of {len(bench.TARGETS)} targets missed:")


def test_each_verdict_line_says_met_or_missed_with_the_measured_value(bench: ModuleType) -> None:
    ratio = bench.Target("ratio", "throughput ratio", ">=", 0.30, "")
    p50 = bench.Target("c1_p50_ms", "one connection p50", "<=", 1.5, "ms")
    verdicts = bench.judge({"ratio": 0.262, "c1_p50_ms": 1.2}, (ratio, p50))
    assert [verdict.line() for verdict in verdicts] == [
        "MISSED  throughput ratio: 0.262 (target ≥ 0.300)",
        "MET     one connection p50: 1.20 ms (target ≤ 1.50 ms)",
    ]
    assert bench.closing_line(verdicts) == "1 of 2 targets missed: throughput ratio"
    assert bench.closing_line(verdicts[1:]) == "0 of 1 targets missed: all met"


def test_every_target_is_judged_on_a_median_the_bench_measures(bench: ModuleType) -> None:
    runs = {
        "api": [{"rps": 1000.0}, {"rps": 3000.0}, {"rps": 2000.0}],
        "bare": [{"rps": 8000.0}, {"rps": 4000.0}, {"rps": 9000.0}],
        "api_c1": [{"p50_ms": 1.0, "p99_ms": 2.0}, {"p50_ms": 3.0, "p99_ms": 9.0}, {"p50_ms": 2.0, "p99_ms": 4.0}],
    }
    solver = {case[0]: [40.0, 60.0, 50.0] for case in bench.SOLVER_CASES}
    values = bench.series(runs, [30.0, 10.0, 20.0], solver)
    summary = bench.summarise(values)
    assert {target.key for target in bench.TARGETS} <= summary.keys()
    assert values["ratio"] == [1000 / 8000, 3000 / 4000, 2000 / 9000]
    assert summary["ratio"] == 2000 / 8000  # the ratio of the medians, not the median of the ratios
    assert (summary["c1_p50_ms"], summary["c1_p99_ms"], summary["first_request_ms"], summary["solver_ms"]) == (
        2.0,
        4.0,
        20.0,
        50.0,
    )


def test_help_is_the_usage_of_the_options_it_takes(bench: ModuleType) -> None:
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
        "--results",
    }
    samples = {"N": "2", "S": "3", "C": "8", "TEXT": "x", "LIMIT": "10/second", "DIR": "out"}
    for option, metavar in documented:
        bench.parse_args([option, samples[metavar]])  # every documented option is taken
    for target in bench.TARGETS:
        assert f"{target.what} {target.describe()}" in result.stdout
    assert "exit status is 0 whether they are met or not" in " ".join(result.stdout.split())


def test_a_wrong_option_is_refused_before_anything_starts() -> None:
    for args in (["--rounds", "0"], ["--bogus"], ["--label", "a/b"]):
        result = run_bench(*args)
        assert result.returncode == 2, args
        assert "usage: scripts/bench" in result.stderr
        assert "==>" not in result.stderr  # nothing installed, provisioned or started


def test_cpu_per_request_is_reported_as_a_median_when_measured(bench: ModuleType) -> None:
    runs = {
        "api": [
            {"rps": 1000.0, "api_cpu_us": 300.0, "pg_cpu_us": 60.0},
            {"rps": 3000.0, "api_cpu_us": 200.0, "pg_cpu_us": 80.0},
            {"rps": 2000.0, "api_cpu_us": 250.0, "pg_cpu_us": 70.0},
        ],
        "bare": [{"rps": 8000.0}] * 3,
        "api_c1": [{"p50_ms": 1.0, "p99_ms": 2.0}] * 3,
    }
    solver = {case[0]: [50.0] for case in bench.SOLVER_CASES}
    summary = bench.summarise(bench.series(runs, [20.0] * 3, solver))
    assert (summary["api_cpu_us"], summary["pg_cpu_us"]) == (250.0, 70.0)


def test_cpu_is_read_for_a_process_and_its_children(bench: ModuleType) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in bench.process_tree(os.getpid()), "a child process is not in its parent's tree"
        spent = bench.cpu_seconds([os.getpid()])
        deadline = time.process_time() + 0.2
        while time.process_time() < deadline:  # burn 0.2 s of CPU: what the counter must see
            pass
        assert bench.cpu_seconds([os.getpid()]) - spent >= 0.1, "/proc's CPU counters did not move"
    finally:
        child.kill()
        child.wait()
