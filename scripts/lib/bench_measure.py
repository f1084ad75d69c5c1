"""What scripts/bench measures with: the servers it starts (the API, the bare app, --tracing's
receiver of the API's spans) and wrk's load on them, the CPU /proc counts for that load, rounds taken
in alternation, py-spy's samples, the first request after a start, the solver alone, and the API's
code at another revision. Nothing here judges or reports a figure: bench_report.py does.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cpu_budget
from jotc_provision import free_port, port_open, stop_process, wait_until

ROOT = Path(__file__).resolve().parents[2]
API_BIN = ROOT / "services/api/.venv/bin"
TRACE_RECEIVER = ROOT / "scripts/lib/trace_receiver.py"
BODY = '{"clouds":[0,0,1,0,0,1,0],"user":"bench@example.com"}'
LUA = f"""
wrk.method = "POST"
wrk.body   = '{BODY}'
wrk.headers["Content-Type"] = "application/json"
"""
WORKERS = 2
API_CONNECTIONS = WORKERS * (
    4 + 1
)  # PostgreSQL connections the bench's API may open: JOTC_DB_POOL_SIZE (4) + /readyz's
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
    extra: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """jotc-api with the bench's settings (and ``extra`` ones, see ``api_env``); its jotc_api package
    from ``source`` when given, what it says on stderr into ``log`` when given."""
    env = api_env(os.environ, port, database_url, scratch, rate_limit, source, extra)
    with log.open("wb") if log is not None else open(os.devnull, "wb") as said:
        return subprocess.Popen([str(API_BIN / "jotc-api")], env=env, stdout=subprocess.DEVNULL, stderr=said)


def api_env(
    inherited: Mapping[str, str],
    port: int,
    database_url: str,
    scratch: Path,
    rate_limit: str | None,
    source: Path | None = None,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """jotc-api's environment: bench's own (``inherited``) without any OTEL_*, so that tracing is on
    only where ``extra`` turns it on (--tracing's after side, ``tracing_env``) and a stray variable
    skews no side; then the bench's settings, and ``extra``."""
    env = {
        **{name: value for name, value in inherited.items() if not name.startswith("OTEL_")},
        "DATABASE_URL": database_url,
        "PORT": str(port),
        "JOTC_HOST": "127.0.0.1",
        "JOTC_WORKERS": str(WORKERS),
        "LOG_FORMAT": "json",
        # Inside the run's scratch directory, so it goes when the run ends.
        "PROMETHEUS_MULTIPROC_DIR": str(scratch / f"metrics-{port}"),
        **(extra or {}),
    }
    if source is not None:
        env["PYTHONPATH"] = str(source)  # ahead of the venv's own (editable) jotc_api
    if rate_limit:
        env["JOTC_RATE_LIMIT"] = rate_limit
    else:
        env.pop("REDIS_URL", None)
        env.pop("JOTC_RATE_LIMIT", None)
    return env


def tracing_env(endpoint: str, ratio: float) -> dict[str, str]:
    """The OTEL_* that turn the API's tracing on (docs/observability.md): spans exported over OTLP/HTTP
    to ``endpoint``, ``ratio`` of the requests sampled (wrk's carry no caller's decision)."""
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": str(ratio),
    }


@dataclass(frozen=True)
class Received:
    """What --tracing's receiver got: export requests answered 200, the spans and bytes in them, and
    requests it refused (not OTLP's protobuf)."""

    exports: int
    spans: int
    bytes: int
    refused: int

    @property
    def empty(self) -> bool:
        """No span reached the receiver: the traced side did not trace."""
        return self.spans == 0


@dataclass(frozen=True)
class TraceReceiver:
    """trace_receiver.py, listening on ``port``, for an API sampling ``ratio`` of its requests."""

    port: int
    ratio: float

    @property
    def env(self) -> dict[str, str]:
        """The traced API's OTEL_*, exporting here."""
        return tracing_env(f"http://127.0.0.1:{self.port}", self.ratio)

    def received(self) -> Received:
        url = f"http://127.0.0.1:{self.port}/received"
        with urllib.request.urlopen(url, timeout=10) as response:
            return Received(**json.loads(response.read()))


@contextmanager
def receiving_traces(ratio: float | None, scratch: Path) -> Iterator[TraceReceiver | None]:
    """--tracing's receiver on a port of its own, a process apart (any python3 runs it), stopped on the
    way out; None when ``ratio`` is (no --tracing)."""
    if ratio is None:
        yield None
        return
    port = free_port()
    log = scratch / "trace-receiver.log"
    with log.open("wb") as said:
        command = [sys.executable, "-B", str(TRACE_RECEIVER), str(port)]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=said)
    try:
        wait_for_port(port, process)
        yield TraceReceiver(port, ratio)
    finally:
        stop_process(process)


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


def process_cpu(pids: list[int]) -> dict[int, float]:
    """CPU seconds each of these processes has used so far; those already gone are left out."""
    return {pid: used_seconds(fields) for pid in pids if (fields := proc_stat(pid)) is not None}


def cpu_spent(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two readings by the processes alive at the second, one started in
    between counted from zero. One that exited in between (a PostgreSQL backend of another client)
    is left out of both: its CPU went with it, and subtracting its first reading alone would make
    the difference negative."""
    return sum(used - before.get(pid, 0.0) for pid, used in after.items())


def cpu_snapshot(api_pid: int) -> tuple[dict[int, float], dict[int, float]]:
    """Each process's CPU so far: the API's (main and workers), and PostgreSQL's."""
    return process_cpu(process_tree(api_pid)), process_cpu(postgres_processes())


def loaded_run(api_pid: int, port: int, connections: int, seconds: int, lua: Path) -> dict[str, float]:
    """One wrk run against the API, with the CPU per request its processes and PostgreSQL's spent."""
    api_before, pg_before = cpu_snapshot(api_pid)
    run = wrk(port, connections, seconds, lua)
    if run["requests"]:
        api_after, pg_after = cpu_snapshot(api_pid)
        run["api_cpu_us"] = cpu_spent(api_before, api_after) / run["requests"] * 1e6
        run["pg_cpu_us"] = cpu_spent(pg_before, pg_after) / run["requests"] * 1e6
    return run


def both_apis(
    args: argparse.Namespace, database_url: str, scratch: Path, traces: TraceReceiver | None = None
) -> AbstractContextManager[tuple[dict[str, subprocess.Popen[bytes]], dict[str, int], Path]]:
    """Before (``--against``'s revision) and after (the work tree, tracing into ``traces`` when
    given), served side by side on one database (``serving``), keyed "before" and "after"."""
    source = source_at(args.against, scratch)
    traced = traces.env if traces is not None else None
    return serving(
        args,
        scratch,
        {
            "before": lambda port, log: start_api(port, database_url, scratch, args.rate_limit, source, log),
            "after": lambda port, log: start_api(port, database_url, scratch, args.rate_limit, None, log, traced),
        },
    )


def round_figures(
    server: subprocess.Popen[bytes], port: int, args: argparse.Namespace, lua: Path, pooler: int | None = None
) -> dict[str, float]:
    """One round on one server: throughput and CPU per request at --connections (and the CPU per
    request of the ``pooler`` process, when given), then one connection's p50 and p99, each for
    --seconds."""
    pooler_before = process_cpu([pooler]) if pooler is not None else {}
    run = loaded_run(server.pid, port, args.connections, args.seconds, lua)
    pooled = {}
    if pooler is not None and run["requests"]:
        pooled["pooler_cpu_us"] = cpu_spent(pooler_before, process_cpu([pooler])) / run["requests"] * 1e6
    one = wrk(port, 1, args.seconds, lua)
    return pooled | {
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


def git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "--no-optional-locks", *args], cwd=ROOT, capture_output=True, text=True, check=False)


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
