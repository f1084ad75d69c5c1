"""Measure the API at scale: POST /jumps on an empty and on a populated database, the admin pages,
the erasure of the heavy user with other users' POST latency during it, and a retention run.

Run with the API's environment (httpx, psycopg), against a database filled by generate.sql;
scripts/scale/README.md has the whole procedure. Prints one JSON document.

    services/api/.venv/bin/python scripts/scale/measure.py \
        --api services/api/.venv/bin/jotc-api --migrate services/db-migrations/.venv/bin/jotc-migrate \
        --database postgresql://postgres@127.0.0.1:5432/jotc_scale_run [--retention-days 365]

The erasure and the retention run change the database: measure a copy
(CREATE DATABASE … TEMPLATE …).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
import jotc_load  # scripts/lib
import jotc_provision  # scripts/lib: the provisioning every script shares

TOKEN = "scale-admin-token"
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


def steal_share(before: list[int], after: list[int]) -> float:
    """The share of the machine's time the hypervisor gave to other guests between two readings:
    on a shared virtual machine, what makes latencies move with nothing changed here."""
    spent = [b - a for a, b in zip(before, after, strict=True)]
    return round(spent[7] / sum(spent), 3) if sum(spent) else 0.0


async def erase_while_posting(base: str, rate: float, baseline_seconds: float = 15) -> dict[str, Any]:
    """POST /jumps at a steady ``rate`` a second (one request in five from the heavy user), sent
    on time whatever the answers' latency (an open loop: a stall shows as latency, where
    closed-loop clients would merely send fewer requests): ``baseline_seconds`` of it, then the
    heavy user's erasure until it is done. Other users' latency in each phase, by when it was sent."""
    latencies: dict[str, list[float]] = {"warming": [], "before": [], "during": []}
    phase = ["warming"]
    failed = [0]
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=httpx.Limits(max_connections=256)) as http:

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
            elif not heavy and sent_in in latencies:
                latencies[sent_in].append(time.perf_counter() - started)

        stop = asyncio.Event()
        posting = asyncio.create_task(jotc_load.steady(post, rate, stop))
        await asyncio.sleep(3)
        phase[0] = "before"
        at_start = cpu_times()
        await asyncio.sleep(baseline_seconds)
        phase[0] = "during"
        at_erasure = cpu_times()
        started = time.perf_counter()
        response = await http.delete(f"/admin/users/{HEAVY}/requests", headers=AUTH)
        first_answer = time.perf_counter() - started
        body = response.json()
        while response.status_code == 202 and body.get("state") != "done":
            await asyncio.sleep(0.5)
            body = (await http.get(body["status_url"], headers=AUTH)).json()
        took = time.perf_counter() - started
        at_end = cpu_times()
        phase[0] = "after"
        stop.set()
        await posting

    def described(values: list[float]) -> dict[str, float]:
        return {
            "posts": len(values),
            "p50_ms": percentile(values, 0.5),
            "p99_ms": percentile(values, 0.99),
            "max_ms": round(max(values, default=0.0) * 1000, 1),
        }

    return {
        "first_answer": response.status_code,
        "first_answer_seconds": round(first_answer, 2),
        "erasure_seconds": round(took, 2),
        "deleted": body["deleted"],
        "rows_per_second": round(body["deleted"] / took),
        "posts_per_second": rate,
        "failed_posts": failed[0],
        "other_users_before": described(latencies["before"]) | {"steal": steal_share(at_start, at_erasure)},
        "other_users_during": described(latencies["during"]) | {"steal": steal_share(at_erasure, at_end)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--api", required=True, help="the jotc-api executable to measure")
    parser.add_argument("--migrate", required=True, help="jotc-migrate, for the empty database")
    parser.add_argument(
        "--database",
        required=True,
        help="the populated database (a copy: it is changed)",
    )
    parser.add_argument("--retention", help="jotc-retention; omitted: no retention run")
    parser.add_argument("--retention-days", type=int, default=365)
    parser.add_argument("--erasure-only", action="store_true", help="only the erasure (and retention)")
    parser.add_argument(
        "--rate",
        type=float,
        default=150,
        help="POST /jumps a second around the erasure",
    )
    args = parser.parse_args()
    results: dict[str, Any] = {}
    server = args.database.rsplit("/", 1)[0]
    with tempfile.TemporaryDirectory(prefix="jotc-scale-") as directory:
        tmp = Path(directory)
        empty = f"jotc_scale_empty_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{empty}"')
        try:
            if not args.erasure_only:  # --erasure-only leaves out the measurements before the erasure
                subprocess.run(
                    [args.migrate, "upgrade"], env={**os.environ, "DATABASE_URL": f"{server}/{empty}"}, check=True
                )
                api = Api(args.api, f"{server}/{empty}", tmp)
                try:
                    results["post_empty"] = wrk_post(api.base, tmp)
                finally:
                    api.stop()
        finally:
            with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{empty}" WITH (FORCE)')
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
            results["erasure"] = asyncio.run(erase_while_posting(api.base, args.rate))
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
    json.dump(results, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
