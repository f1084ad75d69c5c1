"""scripts/bench: its usage text, option checks, target verdicts, the CPU budget's arithmetic and the
one-connection trace (against a stub server), --against's copy of a revision and its report,
--tracing's receiver (fed by the API's own exporter) and the APIs' environments, without running wrk
or the API. scripts/lib/bench.py reads the options; bench_measure.py, bench_trace.py and
bench_report.py hold what the tests below reach."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
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
        "--tracing",
        "--pooler",
        "--results",
    }
    samples = {"N": "2", "S": "3", "C": "8", "TEXT": "x", "LIMIT": "10/second", "DIR": "out", "REV": "HEAD"}
    samples["RATIO"] = "0.1"
    needs = {"--tracing": ["--against", "HEAD"]}  # it traces --against's after side
    for option, metavar in documented:
        given = [option, samples[metavar]] if metavar else [option]
        bench.parse_args(given + needs.get(option, []))  # every documented option is taken
    for target in report.TARGETS:
        assert f"{target.what} {target.describe()}" in result.stdout
    assert "exit status is 0 whether they are met or not" in " ".join(result.stdout.split())


def test_a_wrong_option_is_refused_before_anything_starts() -> None:
    wrong = (["--rounds", "0"], ["--bogus"], ["--label", "a/b"], ["--trace", "--against", "HEAD"], ["--tracing", "0.1"])
    for args in wrong:
        result = run_bench(*args)
        assert result.returncode == 2, args
        assert "usage: scripts/bench" in result.stderr
        assert "==>" not in result.stderr  # nothing installed, provisioned or started


def test_tracing_is_a_ratio_for_the_after_side_of_against_and_nothing_else(
    bench: ModuleType, report: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench.parse_args(["--against", "HEAD", "--tracing", "0.1"]).tracing == 0.1
    assert bench.parse_args(["--against", "HEAD", "--tracing", "1"]).tracing == 1.0
    profiled = bench.parse_args(["--profile", "--against", "HEAD", "--tracing", "0.05", "--seconds", "5"])
    assert report.profile_command(profiled).endswith(" --against HEAD --rounds 3 --tracing 0.05")
    assert bench.parse_args(["--against", "HEAD"]).tracing is None
    for ratio in ("0", "-0.1", "1.5", "nan", "inf", "ten"):
        with pytest.raises(SystemExit):
            bench.parse_args(["--against", "HEAD", "--tracing", ratio])
        assert f"a sampling ratio in (0, 1], e.g. 0.1, got {ratio}" in capsys.readouterr().err
    for alone in ([], ["--pooler"], ["--profile"], ["--floor"]):
        with pytest.raises(SystemExit):
            bench.parse_args([*alone, "--tracing", "0.1"])
        assert "--tracing traces the after side of --against REV" in capsys.readouterr().err, alone


def test_only_the_after_side_traces_whatever_bench_inherits(measure: ModuleType, tmp_path: Path) -> None:
    inherited = {
        "PATH": "/usr/bin",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
        "OTEL_TRACES_SAMPLER": "always_on",
        "OTEL_SDK_DISABLED": "true",
    }
    traced = measure.TraceReceiver(4318, 0.1).env
    before = measure.api_env(inherited, 8001, "postgresql://db/bench", tmp_path, None, source=tmp_path)
    after = measure.api_env(inherited, 8002, "postgresql://db/bench", tmp_path, None, extra=traced)
    assert [name for name in before if name.startswith("OTEL_")] == []
    assert {name: value for name, value in after.items() if name.startswith("OTEL_")} == {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.1",
    }
    assert (before["PATH"], after["PATH"], before["PORT"], after["PORT"]) == ("/usr/bin", "/usr/bin", "8001", "8002")
    assert inherited["OTEL_SDK_DISABLED"] == "true"  # bench's own environment is left as it was


# Run by the API's Python: spans exported by the OTLP/HTTP exporter the API uses, configured from the
# after side's environment alone; then what jotc_api's tracing makes of that environment and the
# before side's (argv[1]).
EXPORT_CODE = r"""
import json, sys
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from jotc_api import tracing
kept = InMemorySpanExporter()
provider = TracerProvider(sampler=ALWAYS_ON)  # all five made, whatever OTEL_TRACES_SAMPLER says
provider.add_span_processor(SimpleSpanProcessor(kept))
for name in ("a", "b", "c", "d", "e"):
    with provider.get_tracer("bench").start_as_current_span(name):
        pass
spans = kept.get_finished_spans()
assert len(spans) == 5, spans
exporter = OTLPSpanExporter()
results = [exporter.export(spans[:3]).name, exporter.export(spans[3:]).name]
exporter.shutdown()
tracing.configure("jotc-api")
sampler = tracing.provider.sampler.get_description() if tracing.provider else None
tracing.shutdown()
print(json.dumps({"results": results, "sampler": sampler, "before": tracing.wanted(json.loads(sys.argv[1]))}))
"""


def test_the_trace_receiver_takes_the_apis_exports_and_counts_them(measure: ModuleType, tmp_path: Path) -> None:
    with measure.receiving_traces(0.1, tmp_path) as traces:
        after = measure.api_env(os.environ, 8002, "postgresql://db/bench", tmp_path, None, extra=traces.env)
        before = measure.api_env(os.environ, 8001, "postgresql://db/bench", tmp_path, None)
        ran = subprocess.run(
            [str(measure.API_BIN / "python"), "-B", "-c", EXPORT_CODE, json.dumps(before)],
            env=after,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert ran.returncode == 0, ran.stderr
        said = json.loads(ran.stdout)
        assert said["results"] == ["SUCCESS", "SUCCESS"], ran.stderr
        assert "TraceIdRatioBased{0.1}" in said["sampler"]  # the after side traces, at the ratio asked
        assert said["before"] is False  # and the before side does not
        got = traces.received()
        assert (got.exports, got.spans, got.refused) == (2, 5, 0)
        assert got.bytes > 5 * 16  # a span's ids alone are 24 bytes
        not_protobuf = urllib.request.Request(
            f"http://127.0.0.1:{traces.port}/v1/traces",
            data=b"\xff\xff",
            headers={"Content-Type": "application/x-protobuf"},
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(not_protobuf, timeout=10)  # noqa: S310 - loopback
        assert refused.value.code == 400
        assert traces.received() == measure.Received(exports=2, spans=5, bytes=got.bytes, refused=1)
    assert not measure.port_open("127.0.0.1", traces.port), "the receiver outlived the run"


def test_against_with_tracing_says_what_was_exported_and_loudly_when_nothing(
    bench: ModuleType, measure: ModuleType, report: ModuleType
) -> None:
    one = {"rps": 1000, "api_cpu_us": 100, "pg_cpu_us": 50, "c1_p50_ms": 0.6, "c1_p99_ms": 2.0, "non_2xx": 0}
    runs = {"before": [one], "after": [one]}
    args = bench.parse_args(["--against", "abc123", "--tracing", "0.1", "--rounds", "1", "--seconds", "4"])
    said = report.against_markdown(args, runs, received=measure.Received(40, 3500, 812345, 0))
    assert "the receiver got 40 OTLP/HTTP export requests, 3500 spans, 812345 bytes" in said
    assert "parentbased_traceidratio at 10 %" in said
    assert "Before (abc123) and after (the work tree, tracing at 10 % sampling)" in said
    assert "`scripts/bench --against abc123 --tracing 0.1 --rounds 1 --seconds 4`" in said
    assert "NOTHING" not in said
    for nothing in (measure.Received(0, 0, 0, 0), measure.Received(3, 0, 30, 2)):  # empty exports, or refused
        silent = report.against_markdown(args, runs, received=nothing)
        assert silent.startswith("**NOTHING WAS EXPORTED: the after side was to trace at 10 % sampling")
        assert "these figures are not tracing's cost.**" in silent
    plain = report.against_markdown(bench.parse_args(["--against", "abc123", "--rounds", "1"]), runs)
    assert "tracing" not in plain.lower()


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
