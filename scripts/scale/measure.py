"""Measure the API at scale: POST /jumps on an empty and on a populated database, the admin pages,
the erasure of the heavy user with other users' POST latency during it, and a retention run.

Run with the API's environment (httpx, psycopg), against a database filled by generate.sql;
scripts/scale/README.md has the whole procedure. Prints one JSON document.

    services/api/.venv/bin/python scripts/scale/measure.py \
        --api services/api/.venv/bin/jotc-api --migrate services/db-migrations/.venv/bin/jotc-migrate \
        --database postgresql://postgres@127.0.0.1:5432/jotc_scale_run [--retention-days 365]

The erasure and the retention run change the database: measure a copy
(CREATE DATABASE … TEMPLATE …). With --plant ROWS, no data is generated: the erasure alone is
measured on a database made for the run on --database's server, where the heavy user has ROWS
requests, dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
import jotc_load  # scripts/lib
import jotc_provision  # scripts/lib: the provisioning every script shares

TOKEN = "scale-admin-token-of-32-characters-or-more"  # pragma: allowlist secret
AUTH = {"authorization": f"Bearer {TOKEN}"}
HEAVY = "heavy"
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
counter = 0
request = function()
  counter = counter + 1
  return wrk.format(nil, nil, nil, '{"clouds":[0,0,1,0,0,1,0],"user":"bench-' .. (counter % 1000) .. '"}')
end
"""


class Api:
    def __init__(self, binary: str, database_url: str, tmp: Path) -> None:
        self.port = jotc_provision.free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "PORT": str(self.port),
            "JOTC_HOST": "127.0.0.1",
            "JOTC_WORKERS": "2",
            "JOTC_ADMIN_TOKEN": TOKEN,
            "PROMETHEUS_MULTIPROC_DIR": str(tmp / f"metrics-{self.port}"),
        }
        log = tmp / f"api-{self.port}.log"
        try:
            self.server = jotc_provision.start_server([binary], env=env, log_path=log, ready_url=f"{self.base}/readyz")
        except jotc_provision.ProvisionError as error:
            raise SystemExit(f"the API did not become ready: {error}") from None

    def stop(self) -> None:
        self.server.stop(timeout=60)


def plant(database_url: str, user: str, rows: int) -> None:
    """``rows`` small valid requests for one user, recorded an hour ago and earlier, with their
    statistics; vacuumed and checkpointed, so that the measurement does not pay for the load."""
    with psycopg.connect(database_url, autocommit=True) as db:
        db.execute(
            "INSERT INTO jump_requests (id, user_name, n, max_jump, clouds, jumps, created_at) "
            "SELECT gen_random_uuid(), %s, 7, 2, '\\x00'::bytea, 3, "
            "now() - interval '1 hour' - i * interval '1 millisecond' FROM generate_series(1, %s) AS i",
            (user, rows),
        )
        db.execute(
            "INSERT INTO user_stats (user_name, requests, last_request_at) "
            "SELECT user_name, count(*), max(created_at) FROM jump_requests WHERE user_name = %s GROUP BY 1",
            (user,),
        )
        db.execute("VACUUM ANALYZE jump_requests")
        db.execute("CHECKPOINT")


def wrk_post(base: str, tmp: Path, seconds: int = 15, connections: int = 16) -> dict[str, float]:
    script = tmp / "post.lua"
    script.write_text(WRK_SCRIPT)
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            f"{base}/jumps",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    assert p99 is not None, out
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99[2]]
    return {"requests_per_second": rate, "p99_ms": round(float(p99[1]) * scale, 2)}


def timed_get(base: str, path: str, params: dict[str, Any], times: int = 7) -> float:
    took = []
    with httpx.Client(base_url=base, headers=AUTH, timeout=120) as http:
        for _ in range(times):
            started = time.perf_counter()
            response = http.get(path, params=params)
            took.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text
    return round(statistics.median(took) * 1000, 1)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values) or [0.0]
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] * 1000, 1)


def cpu_times() -> list[int]:
    """The machine's CPU time so far, by kind (/proc/stat: user nice system idle iowait irq softirq steal)."""
    return [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]


def shares(before: list[int], after: list[int]) -> dict[str, float]:
    """Between two readings, the share of the machine's time the hypervisor gave to other guests
    (steal: on a shared virtual machine, what makes latencies move with nothing changed here) and
    the share its CPUs worked for this guest (busy: neither idle, waiting on I/O nor stolen)."""
    spent = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(spent) or 1
    return {"steal": round(spent[7] / total, 3), "busy": round(1 - (spent[3] + spent[4] + spent[7]) / total, 3)}


WINDOW_SECONDS = 10
SAMPLE = """
SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint, ({checkpoints}),
       (SELECT coalesce(string_agg(wait_event, ','), '') FROM pg_stat_activity
        WHERE datname = current_database() AND pid <> pg_backend_pid() AND state = 'active'
          AND wait_event IS NOT NULL AND wait_event <> 'ClientRead')
"""
# Checkpoints begun so far: PostgreSQL 17 moved the counters from pg_stat_bgwriter to pg_stat_checkpointer.
CHECKPOINTS = {
    True: "SELECT num_timed + num_requested FROM pg_stat_checkpointer",
    False: "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter",
}


class Sampler:
    """Once a second while the load runs: the machine's CPU times, the WAL written so far, the
    checkpoints begun, and what the database's active backends are waiting on; summed into
    windows of WINDOW_SECONDS so that a bad stretch of latency can be set beside its causes."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.samples: list[tuple[float, list[int], int, int, list[str]]] = []

    async def run(self, stop: asyncio.Event) -> None:
        async with await psycopg.AsyncConnection.connect(self.database_url, autocommit=True) as db:
            sample = SAMPLE.format(checkpoints=CHECKPOINTS[db.info.server_version >= 170000])
            while not stop.is_set():
                row = await (await db.execute(sample)).fetchone()
                assert row is not None
                waits = [wait for wait in row[2].split(",") if wait]
                self.samples.append((time.perf_counter(), cpu_times(), int(row[0]), int(row[1]), waits))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1)

    def window(self, began: float, ended: float) -> dict[str, Any]:
        """From the last sample at or before ``began`` to the last at or before ``ended``, so that
        consecutive windows share their edges and add up to the whole run."""
        first = next((sample for sample in reversed(self.samples) if sample[0] <= began), None)
        last = next((sample for sample in reversed(self.samples) if sample[0] <= ended), None)
        if first is None or last is None or last is first:
            return {}
        waits: dict[str, int] = {}
        for sample in self.samples:
            if began < sample[0] <= ended:
                for wait in sample[4]:
                    waits[wait] = waits.get(wait, 0) + 1
        return {
            **shares(first[1], last[1]),
            "wal_mb": round((last[2] - first[2]) / 2**20, 1),
            "checkpoints": last[3] - first[3],
            "waits": dict(sorted(waits.items(), key=lambda item: -item[1])[:4]),
        }


async def erase_while_posting(
    base: str, database_url: str, rate: float, baseline_seconds: float, control_seconds: float = 300
) -> dict[str, Any]:
    """POST /jumps at a steady ``rate`` a second (one request in five from the heavy user), sent
    on time whatever the answers' latency (an open loop: a stall shows as latency, where
    closed-loop clients would merely send fewer requests): ``baseline_seconds`` of it, then the
    heavy user's erasure until it is done, then as long again (up to ``control_seconds``): what
    the machine does over that time, the erasure's aftermath (autovacuum of what it deleted)
    included. Other users' latency in each phase, by when it was sent, and a timeline of
    WINDOW_SECONDS windows: latency beside steal, the machine's busy share, the WAL written,
    checkpoints, the database's wait events, and how late this client itself sent (a starved
    client shows as latency it did not measure in the server)."""
    phases = ("before", "during", "after")
    sent: list[tuple[str, float, float, float]] = []  # (phase, sent at, latency, lateness) of other users' POSTs
    phase = ["warming"]
    failed = [0]
    sampler = Sampler(database_url)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=httpx.Limits(max_connections=256)) as http:
        began = time.perf_counter()

        async def post(number: int) -> None:
            heavy = number % 5 == 0
            sent_in, started = phase[0], time.perf_counter()
            user = HEAVY if heavy else f"other-{number % 1000}"
            try:
                response = await http.post("/jumps", json={"clouds": [0, 0, 1, 0, 0], "user": user})
            except httpx.HTTPError:  # no answer at all (timed out, refused, reset)
                failed[0] += 1
                return
            if response.status_code != 201:
                failed[0] += 1
            elif not heavy and sent_in in phases:
                sent.append((sent_in, started, time.perf_counter() - started, started - began - (number - 1) / rate))

        stop = asyncio.Event()
        posting = asyncio.create_task(jotc_load.steady(post, rate, stop))
        sampling = asyncio.create_task(sampler.run(stop))
        await asyncio.sleep(3)
        if sampling.done():  # it failed: say so now, not after the erasure
            sampling.result()
        phase[0] = "before"
        before_began = time.perf_counter()
        await asyncio.sleep(baseline_seconds)
        phase[0] = "during"
        started = time.perf_counter()
        response = await http.delete(f"/admin/users/{HEAVY}/requests", headers=AUTH)
        first_answer = time.perf_counter() - started
        body = response.json()
        while response.status_code == 202 and body.get("state") != "done":
            await asyncio.sleep(0.5)
            body = (await http.get(body["status_url"], headers=AUTH)).json()
        took = time.perf_counter() - started
        phase[0] = "after"
        await asyncio.sleep(min(took, control_seconds))
        ended = time.perf_counter()
        phase[0] = "ended"
        stop.set()
        await posting
        await sampling

    def described(values: list[float]) -> dict[str, float]:
        return {
            "posts": len(values),
            "p50_ms": percentile(values, 0.5),
            "p99_ms": percentile(values, 0.99),
            "max_ms": round(max(values, default=0.0) * 1000, 1),
        }

    bounds = {"before": (before_began, started), "during": (started, started + took), "after": (started + took, ended)}
    timeline = []
    for name, (began, until) in bounds.items():
        edge = began
        while edge < until:  # each phase in windows of WINDOW_SECONDS; its last may be shorter
            upto = min(edge + WINDOW_SECONDS, until)
            inside = [record for record in sent if edge <= record[1] < upto]
            timeline.append(
                {
                    "phase": name,
                    "from_s": round(edge - started, 1),
                    "seconds": round(upto - edge, 1),
                    **described([record[2] for record in inside]),
                    "client_late_max_ms": round(max((record[3] for record in inside), default=0.0) * 1000, 1),
                    **sampler.window(edge, upto),
                }
            )
            edge = upto
    full = [window for window in timeline if window["seconds"] >= WINDOW_SECONDS / 2 and window["posts"]]
    return {
        "first_answer": response.status_code,
        "first_answer_seconds": round(first_answer, 2),
        "erasure_seconds": round(took, 2),
        "deleted": body["deleted"],
        "rows_per_second": round(body["deleted"] / took),
        "posts_per_second": rate,
        "failed_posts": failed[0],
        **{
            f"other_users_{name}": described([record[2] for record in sent if record[0] == name])
            | {"steal": sampler.window(*bounds[name]).get("steal", 0.0)}
            for name in phases
        },
        # The median of the p99s of the windows of each phase (those of at least half a window):
        # one bad stretch does not move it, as it moves a whole phase's p99.
        "median_window_p99_ms": {
            name: statistics.median(w["p99_ms"] for w in full if w["phase"] == name)
            for name in phases
            if any(w["phase"] == name for w in full)
        },
        "timeline": timeline,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--api", required=True, help="the jotc-api executable to measure")
    parser.add_argument("--migrate", required=True, help="jotc-migrate, for the databases made for the run")
    parser.add_argument(
        "--database",
        required=True,
        help="the populated database (a copy: it is changed); with --plant, any database on the server to use",
    )
    parser.add_argument("--retention", help="jotc-retention; omitted: no retention run")
    parser.add_argument("--retention-days", type=int, default=365)
    parser.add_argument("--erasure-only", action="store_true", help="only the erasure (and retention)")
    parser.add_argument(
        "--plant",
        type=int,
        metavar="ROWS",
        help="only the erasure, of a user with ROWS requests, on a fresh database made for the run",
    )
    parser.add_argument(
        "--baseline-seconds",
        type=float,
        default=60,
        help="seconds of the load before the erasure, the reference its latency is compared with",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=150,
        help="POST /jumps a second around the erasure",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="jotc-scale-") as directory:
        tmp = Path(directory)
        results = measure_planted(args, tmp) if args.plant else measure_populated(args, tmp)
    json.dump(results, sys.stdout, indent=2)
    print()


def measure_planted(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """The erasure of a user with args.plant requests, alone in a database made for it."""
    with jotc_provision.fresh_database(args.database, prefix="jotc_scale_plant", migrate_with=args.migrate) as url:
        plant(url, HEAVY, args.plant)
        api = Api(args.api, url, tmp)
        try:
            erasure = asyncio.run(erase_while_posting(api.base, url, args.rate, args.baseline_seconds))
        finally:
            api.stop()
    return {"rows": args.plant, "users": 1, "erasure": erasure}


def measure_populated(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """POST /jumps on an empty database and on the populated one, the admin pages, the erasure of
    its heavy user, and a retention run (each as the arguments ask)."""
    results: dict[str, Any] = {}
    if not args.erasure_only:  # --erasure-only leaves out the measurements before the erasure
        with jotc_provision.fresh_database(args.database, prefix="jotc_scale_empty", migrate_with=args.migrate) as url:
            api = Api(args.api, url, tmp)
            try:
                results["post_empty"] = wrk_post(api.base, tmp)
            finally:
                api.stop()
    with psycopg.connect(args.database) as db:
        results["rows"], results["users"] = db.execute(
            "SELECT (SELECT count(*) FROM jump_requests), (SELECT count(*) FROM user_stats)"
        ).fetchone() or (0, 0)
    api = Api(args.api, args.database, tmp)
    try:
        if not args.erasure_only:
            results["post_populated"] = wrk_post(api.base, tmp)
        results["admin_ms"] = {
            "stats": timed_get(api.base, "/admin/stats", {}),
            "stats_by_user": timed_get(api.base, "/admin/stats", {"sort": "user", "order": "asc"}),
            "requests": timed_get(api.base, "/admin/requests", {}),
            "requests_of_heavy": timed_get(api.base, "/admin/requests", {"user": HEAVY}),
        }
        results["erasure"] = asyncio.run(erase_while_posting(api.base, args.database, args.rate, args.baseline_seconds))
    finally:
        api.stop()
    if args.retention:
        started = time.perf_counter()
        run = subprocess.run(
            [args.retention],
            env={
                **os.environ,
                "DATABASE_URL": args.database,
                "JOTC_RETENTION_DAYS": str(args.retention_days),
            },
            capture_output=True,
            text=True,
            check=False,
        )
        results["retention"] = {
            "exit": run.returncode,
            "seconds": round(time.perf_counter() - started, 1),
            "said": run.stderr.strip(),
        }
    return results


if __name__ == "__main__":
    main()
