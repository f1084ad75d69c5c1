"""scripts/fleet, the run (fleet.py prepares and starts it with services/db-migrations' interpreter,
which has psycopg): bring the fleet up on 127.0.0.1, start the swarm, go through the phases, stop
everything, judge and report. The parts (instances, balancer, swarm, sampler, probe) are in
fleet_parts.py; the figures, checks and report in fleet_report.py."""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import common
import fleet
import fleet_parts
import fleet_report
import jotc_provision
import psycopg
from common import ROOT, SERVICES, say
from fleet_parts import Balancer, ConnectionSampler, Instance, Swarm
from fleet_report import Phase

MIGRATE = SERVICES / "db-migrations/.venv/bin/jotc-migrate"
# db-migrations' test-only expand revision: a nullable column added to jump_requests, one step past head.
EXPAND = SERVICES / "db-migrations/tests/revisions/expand"
SENTINEL_SERVICE = "jotc"
# The phases whose fault the API answers 503 (with Retry-After) for a moment: keyed requests while
# Redis has no master, requests while PgBouncer is away. Anywhere else a 5xx is a refusal.
FAULTS = ("3 Redis master killed", "4 PgBouncer restarted")


def spread(values: list[float], unit: str = "s") -> str:
    """'3.2 s', or '3.2 to 3.6 s' (an en dash in the report)."""
    low, high = min(values), max(values)
    return f"{low:.1f} {unit}" if f"{low:.1f}" == f"{high:.1f}" else f"{low:.1f}\N{EN DASH}{high:.1f} {unit}"


class Run:
    """The phases, each at least ``least`` seconds long: the swarm's steady load is what they observe."""

    def __init__(self, least: float, sampler: ConnectionSampler) -> None:
        self.least = least
        self.sampler = sampler
        self.phases: list[Phase] = []

    @contextmanager
    def phase(self, name: str) -> Iterator[Phase]:
        say(f"phase {name}")
        current = Phase(name, time.time())
        self.phases.append(current)
        yield current
        # The rest of the phase's length: the swarm runs on and is observed; nothing is awaited here.
        time.sleep(max(0.0, current.start + self.least - time.time()))
        current.end = time.time()
        current.samples = self.sampler.within(current.start, current.end)


def rolling_restart(instances: list[Instance], balancer: Balancer, did: list[str]) -> None:
    """Each instance in turn: SIGTERM (it drains), wait for its exit, start it on its port, wait until
    /readyz answers and HAProxy has it UP again; the next one only then."""
    exits: list[float] = []
    back: list[float] = []
    codes: list[int] = []
    for instance in instances:
        code, took = instance.terminate()
        codes.append(code)
        exits.append(took)
        began = time.monotonic()
        instance.start()
        balancer.wait_until(instance.name, "UP")
        back.append(time.monotonic() - began)
    did.append(
        f"{len(instances)} instances restarted in turn: exit {'/'.join(sorted({str(c) for c in codes}))} "
        f"{spread(exits)} after SIGTERM (drain {instances[0].drain:g} s), UP in HAProxy again "
        f"{spread(back)} after starting"
    )
    if any(codes):
        raise fleet_parts.FleetError(f"an instance exited non-zero after SIGTERM: {codes}")


def redis_failover(group: jotc_provision.RedisSentinelGroup, instances: list[Instance], did: list[str]) -> list[str]:
    """SIGKILL the master; wait for the sentinels to promote the replica and for every instance to
    write through it (an Idempotency-Key POST answered 201, straight to the instance); bring the old
    master back as a replica. The ids of those POSTs."""
    killed = group.kill_master()
    began = time.monotonic()
    promoted = group.wait_for_master(other_than=killed, timeout=60)
    promoted_after = time.monotonic() - began
    ids = [fleet_parts.keyed_post_until_201(instance, timeout=60) for instance in instances]
    followed_after = time.monotonic() - began
    group.restart(killed)
    did.append(
        f"master ({killed.name}) SIGKILLed; the sentinels promoted {promoted.name} {promoted_after:.1f} s later; "
        f"every instance wrote through it (a keyed POST answered 201) within {followed_after:.1f} s of the kill, "
        "none restarted; the old master back as a replica"
    )
    return ids


def pgbouncer_restart(pooler: jotc_provision.PgBouncer, balancer: Balancer, did: list[str]) -> None:
    began = time.monotonic()
    pooler.stop()
    pooler.start()
    down = time.monotonic() - began
    balancer.wait_all("UP", timeout=30)
    did.append(f"PgBouncer stopped (SIGTERM) and started on its port: {down:.2f} s without it; every instance UP")


def additive_migration(direct_url: str, balancer: Balancer, did: list[str]) -> None:
    began = time.monotonic()
    result = subprocess.run(
        [str(MIGRATE), "upgrade"],
        env={**os.environ, "DATABASE_URL": direct_url, "JOTC_MIGRATE_EXTRA_VERSIONS": str(EXPAND)},
        capture_output=True,
        text=True,
        check=False,
        timeout=180,
    )
    took = time.monotonic() - began
    if result.returncode != 0:
        raise fleet_parts.FleetError(f"jotc-migrate upgrade exited {result.returncode}:\n{result.stderr[-3000:]}")
    balancer.wait_all("UP", timeout=30)
    did.append(
        f"t_expand (a nullable column on jump_requests) applied by jotc-migrate straight to PostgreSQL "
        f"in {took:.1f} s; every instance stayed UP (/readyz accepts the newer compatible schema)"
    )


def missing_rows(direct_url: str, ids: set[str]) -> list[str]:
    """Of these record ids, those jump_requests lacks."""
    with psycopg.connect(direct_url, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT wanted::text FROM unnest(%s::uuid[]) AS wanted "
            "WHERE NOT EXISTS (SELECT 1 FROM jump_requests WHERE id = wanted)",
            (sorted(ids),),
        ).fetchall()
    return sorted(str(row[0]) for row in rows)


def versions() -> str:
    def first_line(*command: str) -> str:
        try:
            done = subprocess.run(list(command), capture_output=True, text=True, check=False, timeout=10)
        except OSError:
            return "?"
        return (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr).strip() else "?"

    haproxy = first_line(fleet_parts.haproxy_binary(), "-v").split(" ")[2]
    pgbouncer = first_line(fleet_parts.pgbouncer_binary(), "--version").split(" ")[-1]
    redis = first_line("redis-server", "--version").split(" ")[2].removeprefix("v=")
    return f"HAProxy {haproxy}, PgBouncer {pgbouncer}, Redis {redis}"


def commit() -> str:
    done = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or "?"


def main(argv: list[str]) -> int:
    args = fleet.parse_args(argv)
    scratch = Path(os.environ.get("JOTC_FLEET_SCRATCH") or os.environ.get("TMPDIR") or "/tmp")
    began = time.monotonic()
    with ExitStack() as stack:
        found = stack.enter_context(jotc_provision.servers(throwaway=args.throwaway, scratch=scratch))
        say(found.said[0])
        direct_url = stack.enter_context(
            jotc_provision.fresh_database(found.database_url, prefix="jotc_fleet", migrate_with=str(MIGRATE))
        )
        database = direct_url.rsplit("/", 1)[1]
        readiness = f"{database}_readiness"  # /readyz's own entry, one server connection, as the chart has it
        pooler = jotc_provision.PgBouncer(
            scratch / "pgbouncer", found.database_url, pool_size=args.pool_size, entries={readiness: (database, 1)}
        )
        pooler.start()
        stack.callback(pooler.stop)
        say(f"PgBouncer on 127.0.0.1:{pooler.port}, transaction mode, {args.pool_size} server connections")
        # Not scratch/redis: that is a throwaway Redis of servers() (--throwaway), which the fleet leaves idle.
        (scratch / "redis-sentinel").mkdir()
        group = stack.enter_context(
            jotc_provision.RedisSentinelGroup(scratch / "redis-sentinel", service=SENTINEL_SERVICE)
        )
        say(f"Redis: a master, a replica, sentinels at {group.sentinels_setting}")
        sampler = stack.enter_context(ConnectionSampler(direct_url, pooler))
        settings = {
            "DATABASE_URL": pooler.url(direct_url),
            "JOTC_READINESS_DATABASE_URL": pooler.url(direct_url, readiness),
            "JOTC_DB_POOLER": "transaction",
            "REDIS_SENTINELS": group.sentinels_setting,
            "REDIS_SENTINEL_SERVICE": SENTINEL_SERVICE,
            "JOTC_RATE_LIMIT": f"{args.rate_limit}/minute",
        }
        instances = fleet_parts.start_instances(args.instances, settings, scratch / "logs", args.drain_seconds)
        stack.callback(fleet_parts.stop_instances, instances)
        balancer = stack.enter_context(Balancer(scratch / "haproxy", {i.name: i.port for i in instances}))
        balancer.wait_all("UP", timeout=30)
        say(f"HAProxy on {balancer.url} before {len(instances)} instances")
        swarm = stack.enter_context(Swarm(scratch / "locust", balancer.url, args.users))
        swarm.wait_spawned(timeout=120)
        say(f"the swarm: {args.users} users from 2 Locust workers (up after {time.monotonic() - began:.0f} s)")

        run = Run(args.phase_seconds, sampler)
        acknowledged: set[str] = set()
        with run.phase("1 baseline") as phase:
            phase.did.append(f"{len(instances)} instances UP, the swarm steady")
        with run.phase("2 rolling restart") as phase:
            rolling_restart(instances, balancer, phase.did)
        with run.phase(FAULTS[0]) as phase:
            acknowledged.update(redis_failover(group, instances, phase.did))
        with run.phase(FAULTS[1]) as phase:
            pgbouncer_restart(pooler, balancer, phase.did)
        with run.phase("5 additive migration") as phase:
            additive_migration(direct_url, balancer, phase.did)
        with run.phase("6 rate-limit probe") as phase:
            probe = fleet_parts.probe(balancer.port, args.rate_limit, instances, args.late_syncs)
            phase.did.append(f"one client address past its limit: {fleet_report.answers_text(probe.answers)}")
        swarm.stop()

        records = fleet_report.read_records(swarm.records)
        acknowledged.update(request.record_id for request in records if request.record_id)
        acknowledged.update(probe.record_ids)
        missing = missing_rows(direct_url, acknowledged)
        rows = [fleet_report.figures(phase, records) for phase in run.phases]
        verdicts = fleet_report.checks(
            rows,
            acknowledged=len(acknowledged),
            missing=missing,
            budget=args.pool_size + 1,  # and /readyz's entry
            probe=probe,
            faults=FAULTS,
        )
        context = [
            f"`scripts/fleet {' '.join(argv)}`".replace(" `", "`"),
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {commit()}, {os.cpu_count()} CPUs "
            f"({platform.machine()}), whole run {time.monotonic() - began:.0f} s",
            f"{found.said[0]}; {versions()}",
            f"{len(instances)} \N{MULTIPLICATION SIGN} jotc-api (1 worker, "
            f"JOTC_DB_POOL_SIZE={fleet_parts.DB_POOL_SIZE} + its readiness connection, "
            f"JOTC_DRAIN_SECONDS={args.drain_seconds:g}) through PgBouncer (transaction mode, "
            f"pool {args.pool_size}, /readyz's entry 1); Redis master + replica + 3 sentinels; "
            "HAProxy round robin, /readyz every 0.5 s, fall 2 rise 2, retries 0",
            f"Locust: master + 2 workers, {args.users} users (think time {fleet_parts.THINK}), "
            f"each a client address of its own; JOTC_RATE_LIMIT={args.rate_limit}/minute",
        ]
        text = fleet_report.report("The fleet in miniature", context, rows, args.pool_size + 1, verdicts)
    print(text, end="")
    if args.report:
        args.report.write_text(text)
        say(f"report written to {args.report}")
    return 0 if all(check.ok for check in verdicts) else 1


def _terminated(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminated)  # fleet.py passes SIGTERM on: stop everything, then exit
    try:
        common.run_script(main)
    except (fleet_parts.FleetError, TimeoutError, subprocess.TimeoutExpired) as error:
        print(f"fleet: FAILED: a phase could not be carried out: {error}", file=sys.stderr)
        sys.exit(1)
