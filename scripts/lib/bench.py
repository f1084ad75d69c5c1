"""scripts/bench: JOTC's API against a bare ASGI app under identical Granian settings, same run.

Reports medians of repeated, alternating runs and their ratio, never absolute promises: these
machines are shared and noisy. Writes results/bench-<time>.md and .png.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
API_BIN = ROOT / "services/api/.venv/bin"
LUA = """
wrk.method = "POST"
wrk.body   = '{"clouds":[0,0,1,0,0,1,0],"user":"bench@example.com"}'
wrk.headers["Content-Type"] = "application/json"
"""
WORKERS = 2
BACKPRESSURE = 512  # jotc-api's default: JOTC_RECORDER_MAX_BATCH (128) x JOTC_DB_POOL_SIZE (4)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.01)
    raise SystemExit(f"bench: nothing listened on port {port} within {timeout} s")


RATE_LIMIT: str | None = None  # --rate-limit: JOTC_RATE_LIMIT for the API, with REDIS_URL kept


def start_api(port: int, database_url: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "PORT": str(port),
        "JOTC_HOST": "127.0.0.1",
        "JOTC_WORKERS": str(WORKERS),
        "LOG_FORMAT": "json",
        "PROMETHEUS_MULTIPROC_DIR": f"/tmp/jotc-bench-metrics-{port}",
    }
    if RATE_LIMIT:
        env["JOTC_RATE_LIMIT"] = RATE_LIMIT
    else:
        env.pop("REDIS_URL", None)
        env.pop("JOTC_RATE_LIMIT", None)
    return subprocess.Popen([str(API_BIN / "jotc-api")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_bare(port: int) -> subprocess.Popen[bytes]:
    command = [
        str(API_BIN / "granian"), "--interface", "asgi", "--workers", str(WORKERS), "--loop", "uvloop",
        "--backpressure", str(BACKPRESSURE), "--host", "127.0.0.1", "--port", str(port), "bare_app:app",
    ]
    return subprocess.Popen(
        command, cwd=ROOT / "scripts/lib", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def wrk(port: int, connections: int, seconds: int, lua: Path) -> dict[str, float]:
    threads = min(2, connections)
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(lua),
         f"http://127.0.0.1:{port}/jumps"],
        capture_output=True, text=True, check=True,
    ).stdout
    def latency(label: str) -> float:
        match = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not match:
            raise SystemExit(f"bench: could not read p{label} from wrk:\n{out}")
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[match[2]]
        return float(match[1]) * scale
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: .*", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]),  # type: ignore[index]
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "non_2xx": float(non_2xx[1]) if non_2xx else 0.0,
        "socket_errors": 1.0 if errors else 0.0,
    }


def first_request_ms(database_url: str) -> float:
    """From a fresh start: the slowest of the first POST /jumps on each worker's first connection."""
    port = free_port()
    process = start_api(port, database_url)
    try:
        wait_for_port(port)
        times = []
        for _ in range(WORKERS * 2):
            body = json.dumps({"clouds": [0, 0, 1, 0, 0, 1, 0], "user": "first@example.com"}).encode()
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/jumps", data=body, headers={"content-type": "application/json"}
            )
            started = time.perf_counter()
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
                response.read()
                assert response.status == 201
            times.append((time.perf_counter() - started) * 1000)
        return max(times)
    finally:
        stop(process)


def solver_ms() -> dict[str, float]:
    code = r"""
import random, statistics, time, json
from jotc_api.solver import solve
def game(n, k, p, seed):
    rng = random.Random(seed); out = bytearray(n); run = 0
    for i in range(1, n - 1):
        if run < k - 1 and rng.random() < p: out[i] = 1; run += 1
        else: run = 0
    return bytes(out)
result = {}
for label, k, p in [("n=1,000,000 max_jump=2 (30% thunderheads)", 2, 0.3),
                    ("n=1,000,000 max_jump=2 (no thunderheads)", 2, 0.0),
                    ("n=1,000,000 max_jump=3 (40% thunderheads)", 3, 0.4),
                    ("n=1,000,000 max_jump=3 (no thunderheads)", 3, 0.0),
                    ("n=1,000,000 max_jump=10 (50% thunderheads)", 10, 0.5)]:
    clouds = game(1_000_000, k, p, 7)
    times = []
    for _ in range(7):
        t = time.perf_counter(); solve(clouds, k); times.append((time.perf_counter() - t) * 1000)
    result[label] = statistics.median(times)
print(json.dumps(result))
"""
    out = subprocess.run([str(API_BIN / "python"), "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--results", type=Path, default=ROOT / "results")
    parser.add_argument("--label", default="")
    parser.add_argument("--rate-limit", help="run the API with this JOTC_RATE_LIMIT and REDIS_URL")
    args = parser.parse_args()
    global RATE_LIMIT  # noqa: PLW0603 - one setting for the whole run
    RATE_LIMIT = args.rate_limit
    lua = Path(f"/tmp/jotc-bench-{os.getpid()}.lua")
    lua.write_text(LUA)
    api_port, bare_port = free_port(), free_port()
    api, bare = start_api(api_port, args.database_url), start_bare(bare_port)
    runs: dict[str, list[dict[str, float]]] = {"api": [], "bare": [], "api_c1": []}
    try:
        wait_for_port(api_port)
        wait_for_port(bare_port)
        wrk(api_port, args.connections, 2, lua)  # warm both the same way
        wrk(bare_port, args.connections, 2, lua)
        for round_ in range(args.rounds):
            order = [("api", api_port), ("bare", bare_port)]
            if round_ % 2:
                order.reverse()
            for name, port in order:
                runs[name].append(wrk(port, args.connections, args.seconds, lua))
                print(f"bench: round {round_ + 1} {name}: {runs[name][-1]['rps']:.0f} req/s", file=sys.stderr)
            runs["api_c1"].append(wrk(api_port, 1, args.seconds, lua))
            print(f"bench: round {round_ + 1} api one connection: p50 {runs['api_c1'][-1]['p50_ms']} ms",
                  file=sys.stderr)
    finally:
        stop(api)
        stop(bare)
        lua.unlink(missing_ok=True)
    firsts = [first_request_ms(args.database_url) for _ in range(args.rounds)]
    solver = solver_ms()

    def median(name: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[name])

    api_rps, bare_rps = median("api", "rps"), median("bare", "rps")
    summary = {
        "api_rps": api_rps,
        "bare_rps": bare_rps,
        "ratio": api_rps / bare_rps,
        "c1_p50_ms": median("api_c1", "p50_ms"),
        "c1_p99_ms": median("api_c1", "p99_ms"),
        "first_request_ms": statistics.median(firsts),
        "api_non_2xx": sum(run["non_2xx"] for run in runs["api"] + runs["api_c1"]),
        "solver_ms": solver,
    }
    write_report(args, runs, firsts, summary)


def write_report(args: argparse.Namespace, runs: dict[str, list[dict[str, float]]], firsts: list[float],
                 summary: dict[str, object]) -> None:
    args.results.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    base = args.results / f"bench-{stamp}{'-' + args.label if args.label else ''}"
    solver: dict[str, float] = summary["solver_ms"]  # type: ignore[assignment]
    lines = [
        f"# JOTC bench {stamp} {args.label}".rstrip(),
        "",
        f"Machine: {os.cpu_count()} CPUs; Granian {WORKERS} workers, uvloop, backpressure {BACKPRESSURE}, "
        f"both servers. wrk POST /jumps, {args.connections} connections, {args.seconds} s per run, "
        f"{args.rounds} alternating rounds; medians. Rate limiting: "
        f"{args.rate_limit + ' (Redis)' if args.rate_limit else 'off'}.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| POST /jumps, durable (req/s) | {summary['api_rps']:.0f} |",
        f"| bare ASGI app, fixed JSON (req/s) | {summary['bare_rps']:.0f} |",
        f"| **ratio** | **{summary['ratio']:.3f}** |",
        f"| one connection p50 / p99 (ms) | {summary['c1_p50_ms']:.2f} / {summary['c1_p99_ms']:.2f} |",
        f"| first request after start (ms, slowest of each worker's first) | {summary['first_request_ms']:.1f} |",
        f"| non-2xx answers from the API during the runs | {summary['api_non_2xx']:.0f} |",
        "",
        "Solver alone (median of 7):",
        "",
        "| input | ms |",
        "|---|---|",
        *(f"| {label} | {ms:.1f} |" for label, ms in solver.items()),
        "",
        "Every run:",
        "",
        "| run | API req/s | bare req/s | API c1 p50 ms | API c1 p99 ms | first request ms |",
        "|---|---|---|---|---|---|",
        *(
            f"| {i + 1} | {a['rps']:.0f} | {b['rps']:.0f} | {c['p50_ms']:.2f} | {c['p99_ms']:.2f} | {f:.1f} |"
            for i, (a, b, c, f) in enumerate(zip(runs["api"], runs["bare"], runs["api_c1"], firsts, strict=True))
        ),
        "",
        f"Reproduce: `scripts/bench` (options: {' '.join(sys.argv[1:]).replace(args.database_url, 'DATABASE_URL')})",
    ]
    base.with_suffix(".md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
        left.bar(["POST /jumps\n(durable)", "bare ASGI"], [summary["api_rps"], summary["bare_rps"]],
                 color=["#2b6cb0", "#a0aec0"])
        left.set_ylabel("requests / s (median)")
        left.set_title(f"Throughput, ratio {summary['ratio']:.3f}")
        right.bar(["p50", "p99", "first request"],
                  [summary["c1_p50_ms"], summary["c1_p99_ms"], summary["first_request_ms"]],
                  color=["#2f855a", "#c05621", "#6b46c1"])
        right.set_ylabel("ms")
        right.set_title("One connection latency")
        figure.tight_layout()
        figure.savefig(base.with_suffix(".png"), dpi=100)
    except ImportError:
        print("bench: matplotlib missing; no chart written", file=sys.stderr)
    print(base.with_suffix(".md").read_text())
    print(f"bench: report {base.with_suffix('.md')}, chart {base.with_suffix('.png')}", file=sys.stderr)


if __name__ == "__main__":
    random.seed(1)
    main()
