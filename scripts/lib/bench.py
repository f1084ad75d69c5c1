# /// script
# requires-python = ">=3.11"
# dependencies = ["matplotlib==3.10.9"]
# [tool.uv]
# exclude-newer = "2026-11-28T00:00:00Z"  # freezes matplotlib's own dependencies too
# ///
"""scripts/bench: JOTC's API against a bare ASGI app under identical Granian settings, same run.

Throughput of POST /jumps (durable) and of a bare ASGI app answering fixed JSON, in alternating
wrk runs, their medians and ratio; one-connection latency; the first request after a fresh start;
the solver alone. Each target below is reported MET or MISSED against the median measured
(the one-connection p99 against its worst round).
Writes results/bench-<time>.md and .png. Needs wrk (Debian: apt-get install wrk).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import cpu_budget
from jotc_provision import free_port, port_open, stop_process, wait_until

ROOT = Path(__file__).resolve().parents[2]
API_BIN = ROOT / "services/api/.venv/bin"
BODY = '{"clouds":[0,0,1,0,0,1,0],"user":"bench@example.com"}'
LUA = f"""
wrk.method = "POST"
wrk.body   = '{BODY}'
wrk.headers["Content-Type"] = "application/json"
"""
WORKERS = 2
BACKPRESSURE = 512  # jotc-api's default: JOTC_RECORDER_MAX_BATCH (128) x JOTC_DB_POOL_SIZE (4)
SOLVER_REPEATS = 7
# (label, max_jump, share of thunderheads): n = 1,000,000 each. The first one carries a target.
SOLVER_CASES = (
    ("n=1,000,000 max_jump=2 (30% thunderheads)", 2, 0.3),
    ("n=1,000,000 max_jump=2 (no thunderheads)", 2, 0.0),
    ("n=1,000,000 max_jump=3 (40% thunderheads)", 3, 0.4),
    ("n=1,000,000 max_jump=3 (no thunderheads)", 3, 0.0),
    ("n=1,000,000 max_jump=10 (50% thunderheads)", 10, 0.5),
)


@dataclass(frozen=True)
class Target:
    key: str  # the measure in summarise()'s result, and the per-round series in series()
    what: str
    op: str  # ">=" or "<="
    limit: float
    unit: str
    rounds_key: str = ""  # the per-round series, where it is not named ``key``

    @property
    def rounds(self) -> str:
        return self.rounds_key or self.key

    def met(self, value: float) -> bool:
        return value >= self.limit if self.op == ">=" else value <= self.limit

    def describe(self) -> str:
        return f"{'≥' if self.op == '>=' else '≤'} {format_value(self.limit, self.unit)}"


# The targets, each checked against the median of its measure (the p99's, against its worst round:
# a tail that holds only in most rounds does not hold). Change a target here, nowhere else.
TARGETS: tuple[Target, ...] = (
    Target("ratio", "POST /jumps durable vs bare ASGI app (req/s ratio)", ">=", 0.30, ""),
    Target("c1_p50_ms", "one connection p50", "<=", 1.5, "ms"),
    Target("c1_p99_worst_ms", "one connection p99, worst round", "<=", 3.0, "ms", "c1_p99_ms"),
    Target("first_request_ms", "first request after start", "<=", 35.0, "ms"),
    Target("solver_ms", f"solver alone, {SOLVER_CASES[0][0]}", "<=", 50.0, "ms"),
)


@dataclass(frozen=True)
class Verdict:
    target: Target
    value: float

    @property
    def met(self) -> bool:
        return self.target.met(self.value)

    def line(self) -> str:
        word = "MET" if self.met else "MISSED"
        measured = format_value(self.value, self.target.unit)
        return f"{word:<6}  {self.target.what}: {measured} (target {self.target.describe()})"


def format_value(value: float, unit: str) -> str:
    if not unit:
        return f"{value:.3f}"
    return f"{value:.2f} {unit}" if value < 10 else f"{value:.1f} {unit}"


def judge(summary: dict[str, float], targets: tuple[Target, ...] = TARGETS) -> list[Verdict]:
    return [Verdict(target, summary[target.key]) for target in targets]


def closing_line(verdicts: list[Verdict]) -> str:
    missed = [v.target.what for v in verdicts if not v.met]
    tally = f"{len(missed)} of {len(verdicts)} targets missed"
    return f"{tally}: {'; '.join(missed)}" if missed else f"{tally}: all met"


def series(
    runs: dict[str, list[dict[str, float]]], firsts: list[float], solver: dict[str, list[float]]
) -> dict[str, list[float]]:
    """Every round's value of every measure (the solver: every repeat of the targeted case)."""
    return {
        "api_rps": [run["rps"] for run in runs["api"]],
        "bare_rps": [run["rps"] for run in runs["bare"]],
        "ratio": [a["rps"] / b["rps"] for a, b in zip(runs["api"], runs["bare"], strict=True)],
        "c1_p50_ms": [run["p50_ms"] for run in runs["api_c1"]],
        "c1_p99_ms": [run["p99_ms"] for run in runs["api_c1"]],
        "first_request_ms": list(firsts),
        "solver_ms": list(solver[SOLVER_CASES[0][0]]),
        # CPU per request in the throughput runs: the API's processes (main and workers), and PostgreSQL's.
        **{
            key: [run[key] for run in runs["api"]]
            for key in ("api_cpu_us", "pg_cpu_us")
            if runs["api"] and key in runs["api"][0]
        },
    }


def summarise(values: dict[str, list[float]]) -> dict[str, float]:
    """Medians; the ratio is that of the median throughputs, as the documented figures are; and the
    one-connection p99 of the worst round."""
    summary = {key: statistics.median(points) for key, points in values.items()}
    summary["ratio"] = summary["api_rps"] / summary["bare_rps"]
    summary["c1_p99_worst_ms"] = max(values["c1_p99_ms"])
    return summary


def positive(text: str) -> int:
    number = int(text)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text}")
    return number


def label(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._-]*", text):
        raise argparse.ArgumentTypeError("letters, digits, '.', '_' and '-' only (it ends the file name)")
    return text


def parse_args(argv: list[str]) -> argparse.Namespace:
    targets = "\n".join(f"  {t.what} {t.describe()}" for t in TARGETS)
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description=(__doc__ or "").split("\n", 1)[1].strip()
        + "\nUses a fresh database (dropped afterwards) on the server scripts/test would use.",
        epilog=f"targets (medians, the p99 its worst round; set in scripts/lib/bench.py, TARGETS):\n{targets}\n\n"
        "Missed targets are reported, never asserted: the exit status is 0 whether they are met or not,\n"
        "and non-zero only when the bench itself could not run.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--rounds", type=positive, default=3, metavar="N", help="alternating rounds of API and bare app (default 3)"
    )
    parser.add_argument("--seconds", type=positive, default=10, metavar="S", help="seconds per wrk run (default 10)")
    parser.add_argument(
        "--connections",
        type=positive,
        default=64,
        metavar="C",
        help="wrk connections for the throughput runs (default 64)",
    )
    parser.add_argument(
        "--label", type=label, default="", metavar="TEXT", help="appended to the report's file name and title"
    )
    parser.add_argument(
        "--rate-limit",
        metavar="LIMIT",
        help="run the API with this JOTC_RATE_LIMIT (e.g. 100000000/minute) and Redis; default off",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead of the comparison: the API's CPU per request split by what it was spent on (py-spy "
        "sampling every worker under one wrk run of --seconds at --connections); prints a table. With "
        "--against REV: REV's code and the work tree's, profiled in alternating --rounds, side by side",
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="instead of the comparison: one connection posting for --seconds, every request's latency "
        "timed; prints those above 3 ms with when they happened, and any beat they fall on (a periodic "
        "stall, with its period); "
        "then the recorder's statement alone from psycopg for as long, to tell the database's slow "
        "answers from the API's",
    )
    parser.add_argument(
        "--statements",
        action="store_true",
        help="instead of the comparison: the write's candidate forms (prepared or not, binary or text "
        "parameters, pipeline mode, COPY, a batch of one as plain values) from psycopg alone, --seconds "
        "each at 1 and 16 rows a batch; CPU per row of the client and of PostgreSQL",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="instead of the comparison: what Granian itself costs, in alternating --rounds of --seconds: "
        "the bare app, the bare app holding each request for a batch's commit as POST /jumps waits "
        "(a pause, no database), and the API; CPU per request of each server's processes at "
        "--connections, and one connection p50",
    )
    parser.add_argument(
        "--against",
        metavar="REV",
        help="instead of the comparison: the API's code at git revision REV (before) against the work "
        "tree's (after), both served side by side and measured in alternating --rounds of --seconds: "
        "throughput and CPU per request at --connections, one connection p50 and p99, and after/before "
        "ratios. Only services/api/src is taken from REV: same dependencies, same database schema",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=ROOT / "results",
        metavar="DIR",
        help="where the report and chart go (default results/, git-ignored)",
    )
    args = parser.parse_args(argv)
    modes = [name for name in ("profile", "trace", "statements", "floor", "against") if getattr(args, name)]
    if len(modes) > 1 and modes != ["profile", "against"]:  # a profile of REV beside the work tree's
        parser.error(" and ".join(f"--{name}" for name in modes) + " are separate runs: give one at a time")
    return args


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    def listening() -> bool:
        if process.poll() is not None:
            raise SystemExit(f"bench: {process.args!r} exited with {process.returncode} before listening")
        return port_open("127.0.0.1", port, timeout=0.2)

    try:
        wait_until(listening, timeout=timeout, what=f"bench: something listening on port {port}", interval=0.01)
    except TimeoutError as error:
        raise SystemExit(str(error)) from None


def start_api(
    port: int,
    database_url: str,
    scratch: Path,
    rate_limit: str | None,
    source: Path | None = None,
    log: Path | None = None,
) -> subprocess.Popen[bytes]:
    """jotc-api with the bench's settings; its jotc_api package from ``source`` when given, what it
    says on stderr into ``log`` when given."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "PORT": str(port),
        "JOTC_HOST": "127.0.0.1",
        "JOTC_WORKERS": str(WORKERS),
        "LOG_FORMAT": "json",
        # Inside the run's scratch directory, so it goes when the run ends.
        "PROMETHEUS_MULTIPROC_DIR": str(scratch / f"metrics-{port}"),
    }
    if source is not None:
        env["PYTHONPATH"] = str(source)  # ahead of the venv's own (editable) jotc_api
    if rate_limit:
        env["JOTC_RATE_LIMIT"] = rate_limit
    else:
        env.pop("REDIS_URL", None)
        env.pop("JOTC_RATE_LIMIT", None)
    with log.open("wb") if log is not None else open(os.devnull, "wb") as said:
        return subprocess.Popen([str(API_BIN / "jotc-api")], env=env, stdout=subprocess.DEVNULL, stderr=said)


def start_bare(port: int, target: str = "bare_app:app", log: Path | None = None) -> subprocess.Popen[bytes]:
    command = [
        str(API_BIN / "granian"),
        "--interface",
        "asgi",
        "--workers",
        str(WORKERS),
        "--loop",
        "uvloop",
        "--backpressure",
        str(BACKPRESSURE),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        target,
    ]
    with log.open("wb") if log is not None else open(os.devnull, "wb") as said:
        return subprocess.Popen(
            command,
            cwd=ROOT / "scripts/lib",
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
            stdout=subprocess.DEVNULL,
            stderr=said,
        )


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def proc_stat(pid: int, thread: int | None = None) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (which may hold spaces), or those of one of
    its threads (/proc/PID/task/TID/stat), or None if it is gone."""
    path = Path(f"/proc/{pid}/stat") if thread is None else Path(f"/proc/{pid}/task/{thread}/stat")
    try:
        return path.read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def used_seconds(fields: list[str] | None) -> float:
    """User and system CPU seconds of a /proc stat line (utime, stime), 0 when it is gone."""
    return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU these processes have used so far."""
    return sum(used_seconds(proc_stat(pid)) for pid in pids)


def process_tree(root: int) -> list[int]:
    """root and every process descended from it (Granian's workers are the main process's children)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := proc_stat(int(entry.name))) is not None:
            parents[int(entry.name)] = int(fields[1])
    tree, grew = {root}, True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return sorted(tree)


def postgres_processes() -> list[int]:
    """Every process of the PostgreSQL server (backends, WAL writer, checkpointer...): on a quiet
    machine, what the bench's requests cost it."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == "postgres":
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds used so far by each thread of the process. Read under /proc/PID/task/: /proc/TID/stat
    answers for a thread too, but with the whole process's counters."""
    threads = [int(task.name) for task in Path(f"/proc/{pid}/task").iterdir()]
    return {thread: used_seconds(proc_stat(pid, thread)) for thread in threads}


def cpu_snapshot(api_pid: int) -> tuple[float, float]:
    return cpu_seconds(process_tree(api_pid)), cpu_seconds(postgres_processes())


def loaded_run(api_pid: int, port: int, connections: int, seconds: int, lua: Path) -> dict[str, float]:
    """One wrk run against the API, with the CPU per request its processes and PostgreSQL's spent."""
    before = cpu_snapshot(api_pid)
    run = wrk(port, connections, seconds, lua)
    if run["requests"]:
        api_cpu, pg_cpu = (b - a for a, b in zip(before, cpu_snapshot(api_pid), strict=True))
        run["api_cpu_us"] = api_cpu / run["requests"] * 1e6
        run["pg_cpu_us"] = pg_cpu / run["requests"] * 1e6
    return run


def post_script(scratch: Path) -> Path:
    """wrk's script for POST /jumps, in the run's scratch directory."""
    lua = scratch / "post-jumps.lua"
    lua.write_text(LUA)
    return lua


def wrk(port: int, connections: int, seconds: int, lua: Path) -> dict[str, float]:
    threads = min(2, connections)
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(lua),
            f"http://127.0.0.1:{port}/jumps",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def latency(label: str) -> float:
        match = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not match:
            raise SystemExit(f"bench: could not read p{label} from wrk:\n{out}")
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[match[2]]
        return float(match[1]) * scale

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not rps:
        raise SystemExit(f"bench: could not read Requests/sec from wrk:\n{out}")
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    requests = re.search(r"(\d+) requests in", out)
    return {
        "rps": float(rps[1]),
        "requests": float(requests[1]) if requests else 0.0,
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "non_2xx": float(non_2xx[1]) if non_2xx else 0.0,
        "socket_errors": 1.0 if re.search(r"Socket errors: .*", out) else 0.0,
    }


@contextmanager
def warm_api(
    args: argparse.Namespace, database_url: str, scratch: Path
) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """The API started and warmed as the comparison warms it: (its process, its port, wrk's script)."""
    lua = post_script(scratch)
    port = free_port()
    api = start_api(port, database_url, scratch, args.rate_limit)
    try:
        wait_for_port(port, api)
        wrk(port, args.connections, 2, lua)
        yield api, port, lua
    finally:
        stop_process(api)


@dataclass(frozen=True)
class Sampled:
    """What py-spy and /proc saw of the API's workers during loaded runs."""

    samples: Counter[str]
    python_cpu: float  # seconds, the workers' main threads (the event loop: all their Python)
    other_cpu: float  # seconds, Granian's own threads
    requests: float
    seconds: float  # of load

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def plus(self, other: Sampled) -> Sampled:
        return Sampled(
            self.samples + other.samples,
            self.python_cpu + other.python_cpu,
            self.other_cpu + other.other_cpu,
            self.requests + other.requests,
            self.seconds + other.seconds,
        )

    def budget(self) -> list[tuple[str, float, float]]:
        return cpu_budget.budget(self.samples, self.python_cpu, self.other_cpu, self.requests)


def sampled_run(api: subprocess.Popen[bytes], port: int, lua: Path, args: argparse.Namespace, scratch: Path) -> Sampled:
    """One wrk run of --seconds at --connections with py-spy sampling every worker of ``api``."""
    workers = [pid for pid in process_tree(api.pid) if pid != api.pid]
    before = {pid: thread_cpu(pid) for pid in workers}
    spies: dict[int, tuple[subprocess.Popen[bytes], Path]] = {}
    try:
        for pid in workers:
            output, said = scratch / f"py-spy-{pid}.txt", scratch / f"py-spy-{pid}.err"
            command = [str(API_BIN / "py-spy"), "record", "--pid", str(pid), "--rate", "250", "--nonblocking"]
            command += ["--duration", str(args.seconds), "--format", "raw", "--output", str(output)]
            with said.open("w") as errors:
                spies[pid] = (subprocess.Popen(command, stdout=errors, stderr=errors), output)
        run = wrk(port, args.connections, args.seconds, lua)
        after = {pid: thread_cpu(pid) for pid in workers}
        for pid, (spy, output) in spies.items():
            spy.wait(timeout=60)
            if spy.returncode != 0 or not output.exists():
                lines = (scratch / f"py-spy-{pid}.err").read_text().strip().splitlines()
                raise SystemExit(f"bench: py-spy failed ({lines[0] if lines else spy.returncode}); it needs ptrace")
    finally:
        for spy, _ in spies.values():
            stop_process(spy)
    sampled: Counter[str] = Counter()
    python_cpu = other_cpu = 0.0
    for pid in workers:
        for thread, used in after[pid].items():
            spent = used - before[pid].get(thread, 0.0)
            if thread == pid:  # the worker's main thread runs its event loop: all its Python
                python_cpu += spent
            else:
                other_cpu += spent
        sampled += cpu_budget.samples(spies[pid][1].read_text())
        spies[pid][1].unlink()
    return Sampled(sampled, python_cpu, other_cpu, run["requests"], float(args.seconds))


def profile_command(args: argparse.Namespace) -> str:
    ran = f"scripts/bench --profile --seconds {args.seconds} --connections {args.connections}"
    if args.against:
        ran += f" --against {args.against} --rounds {args.rounds}"
    return ran + (f" --rate-limit {args.rate_limit}" if args.rate_limit else "")


def profile(args: argparse.Namespace, database_url: str, scratch: Path) -> str:
    """The CPU budget table of cpu_budget.py, from one loaded run of the API."""
    with warm_api(args, database_url, scratch) as (api, port, lua):
        seen = sampled_run(api, port, lua, args, scratch)
    table = cpu_budget.markdown(seen.budget(), profile_command(args))
    return f"{table}\n\n{seen.rps:.0f} req/s while sampled; {sum(seen.samples.values())} samples."


FLOOR_SERVERS = (
    ("bare", "bare ASGI app, answering at once"),
    ("waiting", "bare ASGI app, each request held for a batch's commit (a pause, no database)"),
    ("api", "POST /jumps, durable"),
)


def floor(args: argparse.Namespace, database_url: str, scratch: Path) -> str:
    """Granian's own cost per request, for a request answered at once and for one that waits as
    POST /jumps waits, beside the API's, in alternating rounds: the part of the API's CPU no code
    of this service can remove."""
    starts: dict[str, Start] = {
        "bare": lambda port, log: start_bare(port, log=log),
        "waiting": lambda port, log: start_bare(port, "bare_app:waiting", log),
        "api": lambda port, log: start_api(port, database_url, scratch, args.rate_limit, log=log),
    }
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in starts}
    with serving(args, scratch, starts) as (servers, ports, lua):
        for round_, name in alternating(args.rounds, tuple(starts)):
            runs[name].append(round_figures(servers[name], ports[name], args, lua))
            print(f"bench: round {round_ + 1} {name}: {runs[name][-1]['rps']:.0f} req/s", file=sys.stderr)
    return floor_markdown(args, runs)


def floor_markdown(args: argparse.Namespace, runs: dict[str, list[dict[str, float]]]) -> str:
    ran = f"scripts/bench --floor --rounds {args.rounds} --seconds {args.seconds} --connections {args.connections}"
    lines = [
        f"What the server costs, medians of {args.rounds} alternating rounds (`{ran}`):",
        "",
        f"| server | req/s at {args.connections} connections | CPU per request, its processes (µs) "
        "| one connection p50 (ms) |",
        "|---|---:|---:|---:|",
    ]
    for name, what in FLOOR_SERVERS:
        rounds = runs[name]
        rps, cpu, p50 = (statistics.median(r[key] for r in rounds) for key in ("rps", "api_cpu_us", "c1_p50_ms"))
        lines.append(f"| {what} | {rps:.0f} | {cpu:.0f} | {p50:.2f} |")
    refused = {name: sum(r.get("non_2xx", 0) for r in rounds) for name, rounds in runs.items()}
    if any(refused.values()):
        counts = ", ".join(f"{name} {count:.0f}" for name, count in refused.items() if count)
        lines += ["", f"**Not every answer was a 2xx ({counts}): these figures are not the servers' cost.**"]
    return "\n".join(lines)


def extract_source(rev: str, scratch: Path) -> Path:
    """services/api/src as it was at ``rev``, extracted into scratch (the repository is not touched)."""
    commit = git("rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}").stdout.strip()
    if not commit:
        raise SystemExit(f"bench: {rev!r} names no commit of this repository")
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit, "services/api/src"], cwd=ROOT, capture_output=True, check=False
    )
    if archive.returncode != 0:
        raise SystemExit(f"bench: no services/api/src at {rev!r}: {archive.stderr.decode().strip()}")
    tree = scratch / "before"
    tree.mkdir()
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree / "services/api/src"


def source_at(rev: str, scratch: Path) -> Path:
    """``rev``'s services/api/src, checked to be what the API's Python imports with it on its path."""
    source = extract_source(rev, scratch)
    loaded = in_api_env("import json, jotc_api; print(json.dumps(jotc_api.__file__))", env={"PYTHONPATH": str(source)})
    if not Path(loaded).is_relative_to(source):
        raise SystemExit(f"bench: the API's Python loads jotc_api from {loaded}, not from {rev}'s copy")
    return source


AGAINST_MEASURES = (
    ("rps", "POST /jumps, durable (req/s)", "{:.0f}"),
    ("api_cpu_us", "CPU per request, the API's processes (µs)", "{:.0f}"),
    ("pg_cpu_us", "CPU per request, PostgreSQL's processes (µs)", "{:.0f}"),
    ("c1_p50_ms", "one connection p50 (ms)", "{:.2f}"),
    ("c1_p99_ms", "one connection p99 (ms)", "{:.2f}"),
)


Start = Callable[[int, Path], subprocess.Popen[bytes]]  # a server on this port, its stderr into this file


@contextmanager
def serving(
    args: argparse.Namespace, scratch: Path, starts: dict[str, Start]
) -> Iterator[tuple[dict[str, subprocess.Popen[bytes]], dict[str, int], Path]]:
    """Each server started on a port of its own, waited for (its last lines shown if it never
    listens) and warmed as every comparison warms: (the processes, their ports, wrk's script), by
    name. All are stopped on the way out, failures included."""
    lua = post_script(scratch)
    ports = {name: free_port() for name in starts}
    servers: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, start in starts.items():
            log = scratch / f"{name}.log"
            servers[name] = start(ports[name], log)
            try:
                wait_for_port(ports[name], servers[name])
            except SystemExit as failed:
                said = log.read_text(errors="replace").strip().splitlines()[-15:]
                raise SystemExit(f"{failed} ({name}):\n" + "\n".join(said)) from None
            wrk(ports[name], args.connections, 2, lua)
        yield servers, ports, lua
    finally:
        for server in servers.values():
            stop_process(server)


def both_apis(
    args: argparse.Namespace, database_url: str, scratch: Path
) -> AbstractContextManager[tuple[dict[str, subprocess.Popen[bytes]], dict[str, int], Path]]:
    """Before (``--against``'s revision) and after (the work tree), served side by side on one
    database (``serving``), keyed "before" and "after"."""
    source = source_at(args.against, scratch)
    return serving(
        args,
        scratch,
        {
            "before": lambda port, log: start_api(port, database_url, scratch, args.rate_limit, source, log),
            "after": lambda port, log: start_api(port, database_url, scratch, args.rate_limit, None, log),
        },
    )


def round_figures(server: subprocess.Popen[bytes], port: int, args: argparse.Namespace, lua: Path) -> dict[str, float]:
    """One round on one server: throughput and CPU per request at --connections, then one
    connection's p50 and p99, each for --seconds."""
    run = loaded_run(server.pid, port, args.connections, args.seconds, lua)
    one = wrk(port, 1, args.seconds, lua)
    return {
        "rps": run["rps"],
        "api_cpu_us": run.get("api_cpu_us", 0.0),
        "pg_cpu_us": run.get("pg_cpu_us", 0.0),
        "c1_p50_ms": one["p50_ms"],
        "c1_p99_ms": one["p99_ms"],
        "non_2xx": run["non_2xx"] + one["non_2xx"],
    }


def alternating(rounds: int, sides: tuple[str, ...] = ("before", "after")) -> Iterator[tuple[int, str]]:
    """(round, side): the sides in order in odd rounds, in reverse in even ones, so none is always
    measured first."""
    for round_ in range(rounds):
        for name in sides if round_ % 2 == 0 else reversed(sides):
            yield round_, name


def profile_against(args: argparse.Namespace, database_url: str, scratch: Path) -> str:
    """The CPU budget of ``--against``'s revision and of the work tree, each summed over
    alternating sampled runs, side by side: the profile that explains a before/after difference."""
    seen: dict[str, Sampled] = {}
    with both_apis(args, database_url, scratch) as (apis, ports, lua):
        for round_, name in alternating(args.rounds):
            run = sampled_run(apis[name], ports[name], lua, args, scratch)
            seen[name] = seen[name].plus(run) if name in seen else run
            print(f"bench: round {round_ + 1} {name}: {run.rps:.0f} req/s while sampled", file=sys.stderr)
    table = cpu_budget.compare_markdown(seen["before"].budget(), seen["after"].budget(), profile_command(args))
    rates = ", ".join(f"{name} {seen[name].rps:.0f} req/s" for name in ("before", "after"))
    return f"{table}\n\nThroughput while sampled: {rates}."


def against(args: argparse.Namespace, database_url: str, scratch: Path) -> str:
    """Before (``--against``'s revision) and after (the work tree), served side by side on one
    database and measured in alternating rounds, so both see the same machine."""
    runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    with both_apis(args, database_url, scratch) as (apis, ports, lua):
        for round_, name in alternating(args.rounds):
            runs[name].append(round_figures(apis[name], ports[name], args, lua))
            print(f"bench: round {round_ + 1} {name}: {runs[name][-1]['rps']:.0f} req/s", file=sys.stderr)
    return against_markdown(args, runs)


def against_markdown(args: argparse.Namespace, runs: dict[str, list[dict[str, float]]]) -> str:
    median = {
        name: {key: statistics.median(r[key] for r in rounds) for key, _, _ in AGAINST_MEASURES}
        for name, rounds in runs.items()
    }
    ran = f"scripts/bench --against {args.against} --rounds {args.rounds} --seconds {args.seconds}"
    lines = [
        f"Before ({args.against}) and after (the work tree), medians of {args.rounds} alternating rounds (`{ran}`):",
        "",
        "| measure | before | after | after / before |",
        "|---|---:|---:|---:|",
    ]
    for key, what, fmt in AGAINST_MEASURES:
        before, after = median["before"][key], median["after"][key]
        ratio = f"{after / before:.3f}" if before else "-"
        lines.append(f"| {what} | {fmt.format(before)} | {fmt.format(after)} | {ratio} |")
    refused = sum(r["non_2xx"] for rounds in runs.values() for r in rounds)
    lines += [
        "",
        f"Non-2xx answers during the runs: {refused:.0f}.",
        "",
        "| round | " + " | ".join(f"{name} req/s | {name} API µs" for name in runs) + " |",
        "|---|" + "---:|" * (2 * len(runs)),
    ]
    for index in range(args.rounds):
        cells = [fmt.format(runs[name][index][key]) for name in runs for key, _, fmt in AGAINST_MEASURES[:2]]
        lines.append(f"| {index + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


TRACE_LIMIT_MS = 3.0


def one_connection_trace(port: int, seconds: float) -> list[tuple[float, float]]:
    """(seconds since the start, latency in ms) of every POST /jumps one keep-alive connection
    makes, one after another, for ``seconds``. A raw socket and no garbage collection on this
    side, so what is timed is the server's."""
    body = BODY.encode()
    request = (
        b"POST /jumps HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    trace: list[tuple[float, float]] = []
    collecting = gc.isenabled()
    gc.disable()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def more() -> bytes:
                received = connection.recv(65536)
                if not received:
                    raise SystemExit("bench: the server closed the trace's connection")
                return received

            began = time.perf_counter()
            while (sent := time.perf_counter()) - began < seconds:
                connection.sendall(request)
                answer = b""
                while b"\r\n\r\n" not in answer:
                    answer += more()
                head, _, rest = answer.partition(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length: *(\d+)", head)[1])  # type: ignore[index]
                while len(rest) < length:
                    rest += more()
                if not head.startswith(b"HTTP/1.1 201"):
                    raise SystemExit(f"bench: the trace got {head.splitlines()[0]!r}")
                trace.append((sent - began, (time.perf_counter() - sent) * 1000))
    finally:
        if collecting:
            gc.enable()
    return trace


BEAT_WINDOW_S = 0.010  # a slow answer is on a beat when within ±10 ms of it
BEAT_PERIODS_S = [p / 2000 for p in range(200, 4001)]  # 100 ms to 2 s, every 0.5 ms
BEAT_Z = 4.0  # how far above chance a beat's count must be, in standard deviations
BEAT_MIN = 10  # answers on a beat, and a third of those looked at: fewer is chance on some period


def on_beat(times: list[float], period: float) -> list[float]:
    """The largest set of ``times`` that fall within BEAT_WINDOW_S of one phase of ``period``."""
    phases = sorted((t % period, t) for t in times)
    circle = phases + [(phase + period, t) for phase, t in phases]  # the beat may straddle 0
    best: list[float] = []
    end = 0
    for start in range(len(phases)):
        end = max(end, start)
        while end < len(circle) and circle[end][0] - circle[start][0] <= 2 * BEAT_WINDOW_S:
            end += 1
        if end - start > len(best):
            best = [t for _, t in circle[start:end]]
    return best


def beats(times: list[float]) -> list[tuple[float, int]]:
    """Periodic stalls among the slow answers' times: (period s, answers on its beat), strongest
    first. Random times fall on any beat by chance (a share 2 * BEAT_WINDOW_S / period of them), so
    a period is judged by how far its count stands above that chance, in standard deviations (at
    least BEAT_Z; and BEAT_MIN answers and a third of them, as among thousands of periods one
    holds a few random answers). A fraction of the true period holds the same answers with twice
    the chance, so the true one stands highest. Its answers are set aside before the next beat is
    looked for."""
    found: list[tuple[float, int]] = []
    left = sorted(times)
    while len(left) >= BEAT_MIN:
        best: tuple[float, float, list[float]] = (0.0, 0.0, [])
        for period in BEAT_PERIODS_S:
            share = 2 * BEAT_WINDOW_S / period
            chance = len(left) * share
            held = on_beat(left, period)
            z = (len(held) - chance) / math.sqrt(chance * (1 - share))
            if z > best[0]:
                best = (z, period, held)
        z, period, held = best
        if z < BEAT_Z or len(held) < max(BEAT_MIN, len(left) / 3):
            break
        found.append((period, len(held)))
        kept = set(held)
        left = [t for t in left if t not in kept]
    return found


def sampling_daemon() -> str | None:
    """Linux's DAMON, when it runs here: it samples memory every sample_us, which stalls woken
    processes for a few ms each time (seen on the bench machine as a 512 ms beat, with any server)."""
    for state in Path("/sys/kernel/mm/damon/admin/kdamonds").glob("*/state"):
        try:
            if state.read_text().strip() != "on":
                continue
            sample = state.parent / "contexts/0/monitoring_attrs/intervals/sample_us"
            return f"DAMON (kdamond) is on and samples memory every {int(sample.read_text()) / 1000:g} ms"
        except (OSError, ValueError):
            continue
    return None


def describe_trace(trace: list[tuple[float, float]]) -> str:
    latencies = sorted(ms for _, ms in trace)
    slow = [(at, ms) for at, ms in trace if ms > TRACE_LIMIT_MS]
    lines = [
        f"{len(trace)} requests on one connection: p50 {latencies[len(latencies) // 2]:.2f} ms, "
        f"p99 {latencies[int(len(latencies) * 0.99)]:.2f} ms, worst {latencies[-1]:.2f} ms; "
        f"{len(slow)} above {TRACE_LIMIT_MS:g} ms" + (":" if slow else "."),
    ]
    lines += [f"  at {at:7.3f} s: {ms:.2f} ms" for at, ms in slow[:50]]
    if len(slow) > 50:
        lines.append(f"  ... and {len(slow) - 50} more")
    for period, count in beats([at for at, _ in slow]):
        lines.append(f"  a beat: {count} of the {len(slow)} fall every {period * 1000:.1f} ms (±10 ms)")
    return "\n".join(lines)


# The write alone, from psycopg in the API's environment on one connection: no HTTP, no event loop,
# no API. Mode "trace": the recorder's statement for a batch of one, one row per autocommit, every
# one timed, as a writer runs it at one connection. Mode "forms": the write's candidate forms at 1
# and 16 rows a batch (the batch-of-one statement at 1), with the CPU per row of this client (the
# API's share of a write) and of its PostgreSQL backend, and the batch's median wall time; every
# form writes the same rows and statistics.
WRITE_CODE = r"""
import gc, json, re, statistics, sys, time, uuid
import psycopg
from jotc_api.recorder import RECORD_BATCH, RECORD_ONE
from jotc_api.tables import pack_clouds
mode, url, seconds, lib = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
sys.path.insert(0, lib)
from bench import cpu_seconds  # scripts/lib/bench.py's /proc reader
clouds = pack_clouds(bytes([0, 0, 1, 0, 0, 1, 0]))  # BODY's game
TEXT = re.sub(r"%\((\w+)\)b", r"%(\1)s", RECORD_BATCH)
STATS = ("INSERT INTO user_stats AS stats (user_name, requests, last_request_at) "
         "SELECT u, count(*), now() FROM unnest(%(users)s::text[]) AS u GROUP BY u ORDER BY u "
         "ON CONFLICT (user_name) DO UPDATE SET requests = stats.requests + excluded.requests, "
         "last_request_at = greatest(stats.last_request_at, excluded.last_request_at)")

def params(rows):
    return {"ids": [uuid.uuid4() for _ in range(rows)], "users": [f"u{i % 7}" for i in range(rows)],
            "ns": [7] * rows, "max_jumps": [2] * rows, "clouds": [clouds] * rows, "jumps": [3] * rows}

def recorded(c, p): c.execute(RECORD_BATCH, p)
def one_row_values(c, p): c.execute(RECORD_ONE, {name: values[0] for name, values in p.items()})
def unprepared(c, p): c.execute(RECORD_BATCH, p, prepare=False)
def text_parameters(c, p): c.execute(TEXT, p)
def pipelined(c, p):
    with c.pipeline():
        c.execute(RECORD_BATCH, p)
def copy_then_upsert(c, p):
    with c.transaction():
        with c.cursor().copy("COPY jump_requests (id, user_name, n, max_jump, clouds, jumps) FROM STDIN") as copy:
            for row in zip(p["ids"], p["users"], p["ns"], p["max_jumps"], p["clouds"], p["jumps"]):
                copy.write_row(row)
        c.execute(STATS, {"users": p["users"]})

def timed(form, rows):  # (CPU of this thread, of the backend, [(sent at, wall s)]) of `seconds` of batches
    with psycopg.connect(url, autocommit=True) as connection:
        pid = connection.info.backend_pid
        for _ in range(20):
            form(connection, params(rows))  # warm: prepared statements, caches
        walls = []
        gc.disable()
        cpu, server = time.thread_time(), cpu_seconds([pid])
        began = time.perf_counter()
        while (sent := time.perf_counter()) - began < seconds:
            form(connection, params(rows))
            walls.append((sent - began, time.perf_counter() - sent))
        cpu, server = time.thread_time() - cpu, cpu_seconds([pid]) - server
        gc.enable()
    return cpu, server, walls

if mode == "trace":
    print(json.dumps([(at, wall * 1000) for at, wall in timed(one_row_values, 1)[2]]))
else:
    result = []
    for name, form in [("the recorder's batch statement (binary arrays, prepared after 5)", recorded),
                       ("the same, never prepared", unprepared), ("the same, text parameters", text_parameters),
                       ("the same, in pipeline mode", pipelined),
                       ("COPY the rows, then upsert the statistics (one transaction)", copy_then_upsert),
                       ("the recorder's statement for a batch of one (binary values, no arrays)", one_row_values)]:
        for rows in (1,) if form is one_row_values else (1, 16):
            cpu, server, walls = timed(form, rows)
            written = len(walls) * rows
            result.append([name, rows, cpu / written * 1e6, server / written * 1e6,
                           statistics.median(wall for _, wall in walls) * 1e6])
    print(json.dumps(result))
"""


def in_api_env(code: str, *args: str, env: dict[str, str] | None = None) -> Any:
    """What ``code`` prints as JSON, run by the API's own Python (its NumPy, psycopg and jotc_api)."""
    out = subprocess.run(
        [str(API_BIN / "python"), "-B", "-c", code, *args],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **(env or {})},
    )
    return json.loads(out.stdout)


def database_trace(database_url: str, seconds: float) -> list[tuple[float, float]]:
    """The one-connection trace without the API: the recorder's statement alone, one row per commit."""
    trace = in_api_env(WRITE_CODE, "trace", database_url, str(seconds), str(Path(__file__).parent))
    return [(at, ms) for at, ms in trace]


def statement_costs(database_url: str, seconds: float) -> str:
    """The write's candidate forms side by side, as a table."""
    forms = in_api_env(WRITE_CODE, "forms", database_url, str(seconds), str(Path(__file__).parent))
    lines = [
        f"The write's forms from psycopg, one connection, {seconds:g} s each (`scripts/bench --statements`):",
        "",
        "| form | rows a batch | client CPU µs/row | PostgreSQL CPU µs/row | batch wall µs (median) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, rows, client, server, wall in forms:
        lines.append(f"| {name} | {rows} | {client:.0f} | {server:.0f} | {wall:.0f} |")
    return "\n".join(lines)


def trace_run(args: argparse.Namespace, database_url: str, scratch: Path) -> str:
    """The API's trace, then the database's alone for as long: a slow answer the database alone
    shows as often is not the API's to remove."""
    with warm_api(args, database_url, scratch) as (_, port, _):
        through_api = describe_trace(one_connection_trace(port, args.seconds))
    alone = describe_trace(database_trace(database_url, args.seconds))
    report = f"Through the API:\n{through_api}\n\nThe recorder's statement alone (psycopg, no API):\n{alone}"
    daemon = sampling_daemon()
    return report + (f"\n\nOn this machine: {daemon}." if daemon else "")


def first_request_ms(database_url: str, scratch: Path, rate_limit: str | None) -> float:
    """From a fresh start: the slowest of the first POST /jumps on each worker's first connection."""
    port = free_port()
    process = start_api(port, database_url, scratch, rate_limit)
    try:
        wait_for_port(port, process)
        times = []
        body = json.dumps({"clouds": [0, 0, 1, 0, 0, 1, 0], "user": "first@example.com"}).encode()
        for _ in range(WORKERS * 2):
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/jumps", data=body, headers={"content-type": "application/json"}
            )
            started = time.perf_counter()
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
                response.read()
                if response.status != 201:
                    raise SystemExit(f"bench: first request answered {response.status}, not 201")
            times.append((time.perf_counter() - started) * 1000)
        return max(times)
    finally:
        stop_process(process)


SOLVER_CODE = r"""
import json, random, sys, time
from jotc_api.solver import solve
cases, repeats = json.loads(sys.argv[1]), int(sys.argv[2])
def game(n, k, p, seed):
    rng = random.Random(seed); out = bytearray(n); run = 0
    for i in range(1, n - 1):
        if run < k - 1 and rng.random() < p: out[i] = 1; run += 1
        else: run = 0
    return bytes(out)
result = {}
for label, k, p in cases:
    clouds = game(1_000_000, k, p, 7)
    times = []
    for _ in range(repeats):
        t = time.perf_counter(); solve(clouds, k); times.append((time.perf_counter() - t) * 1000)
    result[label] = times
print(json.dumps(result))
"""


def solver_ms() -> dict[str, list[float]]:
    """Every timing of every case, in the API's own environment (the solver needs its NumPy)."""
    times: dict[str, list[float]] = in_api_env(SOLVER_CODE, json.dumps(SOLVER_CASES), str(SOLVER_REPEATS))
    return times


def git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "--no-optional-locks", *args], cwd=ROOT, capture_output=True, text=True, check=False)


def context(argv: list[str]) -> dict[str, str]:
    """Where and how this run was made: date, commit (+dirty: tracked files differ from it), machine, command."""
    commit = git("rev-parse", "--short", "HEAD").stdout.strip() or "unknown"
    if commit != "unknown" and git("diff", "--quiet", "HEAD", "--").returncode != 0:
        commit += "+dirty"
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    except OSError:
        model = None
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    now = datetime.now(UTC)
    return {
        "date": now.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "stamp": now.strftime("%Y%m%dT%H%M%SZ"),
        "commit": commit,
        "machine": f"nproc {nproc}, {model[1].strip() if model else 'CPU model unknown'}",
        "command": shlex.join(["scripts/bench", *argv]),
    }


def measure(
    args: argparse.Namespace, database_url: str, scratch: Path
) -> tuple[dict[str, list[dict[str, float]]], list[float], dict[str, list[float]]]:
    lua = post_script(scratch)
    api_port, bare_port = free_port(), free_port()
    api = start_api(api_port, database_url, scratch, args.rate_limit)
    bare = start_bare(bare_port)
    runs: dict[str, list[dict[str, float]]] = {"api": [], "bare": [], "api_c1": []}
    try:
        wait_for_port(api_port, api)
        wait_for_port(bare_port, bare)
        wrk(api_port, args.connections, 2, lua)  # warm both the same way
        wrk(bare_port, args.connections, 2, lua)
        for round_ in range(args.rounds):
            order = [("api", api_port), ("bare", bare_port)]
            if round_ % 2:
                order.reverse()
            for name, port in order:
                if name == "api":
                    runs[name].append(loaded_run(api.pid, port, args.connections, args.seconds, lua))
                else:
                    runs[name].append(wrk(port, args.connections, args.seconds, lua))
                print(f"bench: round {round_ + 1} {name}: {runs[name][-1]['rps']:.0f} req/s", file=sys.stderr)
            runs["api_c1"].append(wrk(api_port, 1, args.seconds, lua))
            print(
                f"bench: round {round_ + 1} api one connection: p50 {runs['api_c1'][-1]['p50_ms']} ms", file=sys.stderr
            )
    finally:
        stop_process(api)
        stop_process(bare)
    firsts = [first_request_ms(database_url, scratch, args.rate_limit) for _ in range(args.rounds)]
    return runs, firsts, solver_ms()


def report_markdown(
    args: argparse.Namespace,
    ctx: dict[str, str],
    runs: dict[str, list[dict[str, float]]],
    firsts: list[float],
    solver: dict[str, list[float]],
    summary: dict[str, float],
    verdicts: list[Verdict],
) -> str:
    values = series(runs, firsts, solver)
    non_2xx = sum(run["non_2xx"] for run in runs["api"] + runs["api_c1"])
    lines = [
        f"# JOTC bench {ctx['date']} {args.label}".rstrip(),
        "",
        f"- Date: {ctx['date']}",
        f"- Commit: {ctx['commit']}",
        f"- Machine: {ctx['machine']}",
        f"- Command: `{ctx['command']}`",
        f"- Settings: Granian {WORKERS} workers, uvloop, backpressure {BACKPRESSURE}, both servers; wrk POST /jumps, "
        f"{args.connections} connections, {args.seconds} s per run, {args.rounds} alternating rounds; medians. "
        f"Rate limiting: {args.rate_limit + ' (Redis)' if args.rate_limit else 'off'}.",
        "",
        "## Targets",
        "",
        "Checked against the median (the one-connection p99 against its worst round); reported, never asserted "
        "(the exit status does not depend on them).",
        "",
        "| target | measured (median; p99: worst round) | every round | verdict |",
        "|---|---|---|---|",
        *(
            f"| {v.target.what} {v.target.describe()} | {format_value(v.value, v.target.unit)} | "
            f"{', '.join(format_value(x, v.target.unit) for x in values[v.target.rounds])} | "
            f"{'MET' if v.met else '**MISSED**'} |"
            for v in verdicts
        ),
        "",
        f"**{closing_line(verdicts)}.**",
        "",
        "## Measures",
        "",
        "| measure | median |",
        "|---|---|",
        f"| POST /jumps, durable (req/s) | {summary['api_rps']:.0f} |",
        f"| bare ASGI app, fixed JSON (req/s) | {summary['bare_rps']:.0f} |",
        f"| ratio | {summary['ratio']:.3f} |",
        f"| one connection p50 / p99 (ms) | {summary['c1_p50_ms']:.2f} / {summary['c1_p99_ms']:.2f} |",
        f"| first request after start (ms, slowest of each worker's first) | {summary['first_request_ms']:.1f} |",
        f"| non-2xx answers from the API during the runs | {non_2xx:.0f} |",
        *(
            [
                f"| CPU per request, the API's processes (µs) | {summary['api_cpu_us']:.0f} |",
                f"| CPU per request, PostgreSQL's processes (µs) | {summary['pg_cpu_us']:.0f} |",
            ]
            if "api_cpu_us" in summary
            else []
        ),
        "",
        f"Solver alone ({SOLVER_REPEATS} runs each):",
        "",
        "| input | median ms | min to max ms |",
        "|---|---|---|",
        *(f"| {case} | {statistics.median(ms):.1f} | {min(ms):.1f} to {max(ms):.1f} |" for case, ms in solver.items()),
        "",
        "Every round:",
        "",
        "| round | API req/s | bare req/s | ratio | API c1 p50 ms | API c1 p99 ms | first request ms |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {i + 1} | {a['rps']:.0f} | {b['rps']:.0f} | {a['rps'] / b['rps']:.3f} | {c['p50_ms']:.2f} | "
            f"{c['p99_ms']:.2f} | {f:.1f} |"
            for i, (a, b, c, f) in enumerate(zip(runs["api"], runs["bare"], runs["api_c1"], firsts, strict=True))
        ),
    ]
    return "\n".join(lines) + "\n"


def draw_chart(
    path: Path,
    args: argparse.Namespace,
    ctx: dict[str, str],
    values: dict[str, list[float]],
    solver: dict[str, list[float]],
    summary: dict[str, float],
    verdicts: list[Verdict],
) -> None:
    """Every round as a point, its median as a bar, each target as a dashed line, verdicts in the titles."""
    import matplotlib  # type: ignore[import-not-found,unused-ignore]  # only in the bench's own environment

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found,unused-ignore]

    met_colour, missed_colour = "#2f855a", "#c53030"
    by_key = {v.target.rounds: v for v in verdicts}

    def strip(axes: Any, x: float, points: list[float], colour: str, bar: float | None = None) -> None:
        """The points, and a bar at the value judged (the median unless ``bar`` says otherwise)."""
        axes.vlines(x, min(points), max(points), color=colour, linewidth=1)
        axes.scatter([x] * len(points), points, color=colour, s=18, zorder=3)
        axes.hlines(statistics.median(points) if bar is None else bar, x - 0.25, x + 0.25, color=colour, linewidth=2.5)

    def target_line(axes: Any, key: str, x_from: float = -0.4, x_to: float = 0.4, name: str = "target") -> str:
        verdict = by_key[key]
        word = "MET" if verdict.met else "MISSED"
        axes.hlines(
            verdict.target.limit,
            x_from,
            x_to,
            color=met_colour if verdict.met else missed_colour,
            linestyle="--",
            linewidth=1.5,
            label=f"{name} {verdict.target.describe()}: {word}",
        )
        axes.legend(loc="best", fontsize=8)
        return word

    figure, grid = plt.subplots(2, 3, figsize=(15, 8.5))
    (throughput, ratio, latency), (first, solver_axes, verdict_axes) = grid

    strip(throughput, 0, values["api_rps"], "#2b6cb0")
    strip(throughput, 1, values["bare_rps"], "#718096")
    throughput.set_xticks([0, 1], ["POST /jumps\n(durable)", "bare ASGI app"])
    throughput.set_xlim(-0.6, 1.6)
    throughput.set_ylim(bottom=0)
    throughput.set_ylabel("requests / s")
    throughput.set_title(f"Throughput, {args.connections} connections")

    strip(ratio, 0, values["ratio"], "#2b6cb0", bar=summary["ratio"])
    ratio.set_xticks([0], ["durable / bare"])
    ratio.set_xlim(-0.6, 0.6)
    ratio.set_ylim(0, max([*values["ratio"], by_key["ratio"].target.limit]) * 1.3)
    word = target_line(ratio, "ratio")
    ratio.set_title(f"Ratio {summary['ratio']:.3f}: {word}")

    strip(latency, 0, values["c1_p50_ms"], "#2f855a")
    strip(latency, 1, values["c1_p99_ms"], "#c05621", bar=summary["c1_p99_worst_ms"])
    latency.set_xticks([0, 1], ["p50", "p99"])
    latency.set_xlim(-0.6, 1.6)
    latency.set_ylim(0, max([*values["c1_p99_ms"], by_key["c1_p99_ms"].target.limit]) * 1.25)
    p50_word = target_line(latency, "c1_p50_ms", name="p50 target")
    p99_word = target_line(latency, "c1_p99_ms", 0.6, 1.4, name="p99 target")
    latency.set_ylabel("ms")
    latency.set_title(f"One connection: p50 {p50_word}, p99 {p99_word}")

    strip(first, 0, values["first_request_ms"], "#6b46c1")
    first.set_xticks([0], ["first request"])
    first.set_xlim(-0.6, 0.6)
    first.set_ylim(0, max([*values["first_request_ms"], by_key["first_request_ms"].target.limit]) * 1.25)
    first.set_ylabel("ms")
    first.set_title(f"First request after start: {target_line(first, 'first_request_ms')}")

    for x, times in enumerate(solver.values()):
        strip(solver_axes, x, times, "#2b6cb0" if x == 0 else "#718096")
    solver_axes.set_yscale("log")
    solver_axes.set_xticks(range(len(SOLVER_CASES)), [f"{k} · {p:.0%}" for _, k, p in SOLVER_CASES])
    solver_axes.set_xlabel("max_jump · thunderheads")
    solver_axes.set_xlim(-0.6, len(solver) - 0.4)
    solver_axes.set_ylabel("ms (log)")
    _, k, share = SOLVER_CASES[0]
    word = target_line(solver_axes, "solver_ms", name=f"{k} · {share:.0%} target")
    solver_axes.set_title(f"Solver, n = 1,000,000, {SOLVER_REPEATS} runs each: {word}")

    verdict_axes.axis("off")
    verdict_axes.set_title("Targets (medians; p99: worst round)")
    for row, verdict in enumerate(verdicts):
        verdict_axes.text(
            0,
            0.92 - row * 0.14,
            f"{'MET' if verdict.met else 'MISSED'}",
            fontweight="bold",
            color=met_colour if verdict.met else missed_colour,
            transform=verdict_axes.transAxes,
        )
        verdict_axes.text(
            0.2,
            0.92 - row * 0.14,
            f"{verdict.target.what}\n{format_value(verdict.value, verdict.target.unit)} "
            f"(target {verdict.target.describe()})",
            fontsize=8,
            va="center",
            transform=verdict_axes.transAxes,
        )
    verdict_axes.text(
        0,
        0.92 - len(verdicts) * 0.14,
        closing_line(verdicts).split(":")[0],
        fontweight="bold",
        transform=verdict_axes.transAxes,
    )

    figure.suptitle(
        f"JOTC bench {ctx['date']} · commit {ctx['commit']}{' · ' + args.label if args.label else ''}", fontsize=13
    )
    rounds = f"{args.rounds} round{'s' if args.rounds > 1 else ''} of {args.seconds} s"
    figure.text(
        0.01,
        0.01,
        f"{ctx['command']}  ·  {rounds} (points: each round; solid: median, the p99's worst round; dashed: target)"
        f"  ·  {ctx['machine']}  ·  Granian {WORKERS} workers",
        fontsize=8,
        color="#4a5568",
    )
    figure.tight_layout(rect=(0, 0.03, 1, 0.96))
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _terminated(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop servers and remove files


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    database_url = os.environ.get("DATABASE_URL")
    if not database_url:
        raise SystemExit("bench: DATABASE_URL (a migrated database of its own) is needed: run it as scripts/bench")
    signal.signal(signal.SIGTERM, _terminated)
    ctx = context(argv)
    if args.trace:
        with tempfile.TemporaryDirectory(prefix="jotc-bench-") as scratch:
            print(trace_run(args, database_url, Path(scratch)))
        return
    if args.profile:
        with tempfile.TemporaryDirectory(prefix="jotc-bench-") as scratch:
            print((profile_against if args.against else profile)(args, database_url, Path(scratch)))
        return
    if args.floor:
        with tempfile.TemporaryDirectory(prefix="jotc-bench-") as scratch:
            print(floor(args, database_url, Path(scratch)))
        return
    if args.statements:
        print(statement_costs(database_url, args.seconds))
        return
    if args.against:
        with tempfile.TemporaryDirectory(prefix="jotc-bench-") as scratch:
            report = against(args, database_url, Path(scratch))
        args.results.mkdir(parents=True, exist_ok=True)
        written = args.results / f"bench-{ctx['stamp']}-against{'-' + args.label if args.label else ''}.md"
        written.write_text(
            f"# scripts/bench --against\n\n{ctx['date']}, {ctx['commit']}, {ctx['machine']}\n\n{report}\n"
        )
        print(report)
        print(f"bench: report {written}")
        return
    with tempfile.TemporaryDirectory(prefix="jotc-bench-") as scratch:
        runs, firsts, solver = measure(args, database_url, Path(scratch))
    values = series(runs, firsts, solver)
    summary = summarise(values)
    verdicts = judge(summary)
    args.results.mkdir(parents=True, exist_ok=True)
    base = args.results / f"bench-{ctx['stamp']}{'-' + args.label if args.label else ''}"
    markdown = report_markdown(args, ctx, runs, firsts, solver, summary, verdicts)
    base.with_suffix(".md").write_text(markdown)
    draw_chart(base.with_suffix(".png"), args, ctx, values, solver, summary, verdicts)
    print(markdown)
    print(f"bench: report {base.with_suffix('.md')}, chart {base.with_suffix('.png')}")
    for verdict in verdicts:
        print(f"bench: {verdict.line()}")
    print(f"bench: {closing_line(verdicts)} (reported, not asserted: the exit status is 0 either way)")


if __name__ == "__main__":
    main(sys.argv[1:])
