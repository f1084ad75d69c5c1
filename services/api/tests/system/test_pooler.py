"""The real server behind PgBouncer in transaction mode: two API processes whose pools hold more
client connections than the pooler lends, under a crowd of writers with an erasure and admin reads
beside them. PostgreSQL never sees more of them than the pooler's pool, every request is answered
201 and recorded, and the erasure finishes."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import jotc_provision
import psycopg
from jotc_provision import PgBouncer, wait_until
from support import AUTH, migrate_command, plant, server_url, start_api

POOL = 2  # server connections the pooler lends, per database
API_POOL = 4  # client connections each API worker holds (JOTC_DB_POOL_SIZE), + 1 for /readyz
WRITERS, EACH = 8, 40


def backends(db: psycopg.Connection[tuple[object, ...]]) -> list[tuple[object, ...]]:
    """Clients' backends on db's database (not autovacuum's), db's own excepted: pid, application
    name, state. One connection for every sample: a closed one lingers in pg_stat_activity a moment."""
    return db.execute(
        "SELECT pid, application_name, state FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
    ).fetchall()


def test_postgresql_sees_no_more_connections_than_the_pool_while_the_fleet_writes_and_erases(
    tmp_root: Path, tmp_path: Path
) -> None:
    with jotc_provision.fresh_database(server_url(), migrate_with=migrate_command()) as direct_url:
        database = direct_url.rsplit("/", 1)[1]
        # /readyz through an entry of its own, one server connection, as the chart's PgBouncer has it.
        entries = {f"{database}_readiness": (database, 1)}
        bouncer = PgBouncer(tmp_path / "pgbouncer", server_url(), pool_size=POOL, entries=entries)
        bouncer.start()
        servers = []
        try:
            pooled = bouncer.url(direct_url)
            erased = f"pooled-erasure-{uuid.uuid4().hex[:8]}"
            plant(pooled, erased, 2000)
            settings = {
                "JOTC_DB_POOLER": "transaction",
                "JOTC_READINESS_DATABASE_URL": bouncer.url(direct_url, f"{database}_readiness"),
                "JOTC_DB_POOL_SIZE": str(API_POOL),
                "JOTC_WORKERS": "2",
            }
            servers = [start_api(pooled, tmp_root, **settings) for _ in range(2)]
            # 2 processes x 2 workers x (4 + 1) client connections against a pool of 2.
            seen: list[int] = []
            crowded: list[list[tuple[object, ...]]] = []
            stop = threading.Event()

            def sample() -> None:
                with psycopg.connect(direct_url, autocommit=True) as db:
                    while not stop.is_set():
                        found = backends(db)
                        seen.append(len(found))
                        if len(found) > POOL + 1:
                            crowded.append(found)
                        time.sleep(0.02)  # the sampling interval

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()

            def write(number: int) -> list[tuple[int, str | None]]:
                server = servers[number % len(servers)]
                answers = []
                with httpx.Client(base_url=server.base_url, timeout=30) as http:
                    for _ in range(EACH):
                        response = http.post("/jumps", json={"clouds": [0, 0, 1, 0, 0], "user": f"pooled-{number}"})
                        body = response.json() if response.status_code == 201 else {}
                        answers.append((response.status_code, body.get("id")))
                        http.get("/admin/stats", headers=AUTH)
                return answers

            with httpx.Client(base_url=servers[0].base_url, timeout=30) as admin:
                started = admin.delete(f"/admin/users/{erased}/requests", headers=AUTH)
                assert started.status_code in (200, 202), started.text
                with ThreadPoolExecutor(WRITERS) as pool:
                    answers = [answer for batch in pool.map(write, range(WRITERS)) for answer in batch]

                def erasure_done() -> bool:
                    job = admin.get(f"/admin/erasures/{erased}", headers=AUTH)
                    return job.status_code == 200 and job.json()["state"] == "done"

                wait_until(erasure_done, timeout=120, what="the erasure finished through the pooler", interval=0.2)
            stop.set()
            sampler.join()
        finally:
            for server in servers:
                server.stop()
            bouncer.stop()
        statuses = Counter(status for status, _ in answers)
        assert statuses == {201: WRITERS * EACH}, f"answers: {dict(statuses)}"
        with psycopg.connect(direct_url) as db:
            ids = [uuid.UUID(record) for _, record in answers if record]
            row = db.execute("SELECT count(*) FROM jump_requests WHERE id = ANY(%s)", (ids,)).fetchone()
            left = db.execute("SELECT count(*) FROM jump_requests WHERE user_name = %s", (erased,)).fetchone()
        assert row == (WRITERS * EACH,), "every acknowledged request has its row"
        assert left == (0,), "the erasure removed every planted row"
        assert seen, "the sampler ran"
        assert max(seen) <= POOL + 1, f"PostgreSQL saw {max(seen)} connections; the pools are {POOL} + 1: {crowded}"
        print(f"\nserver connections seen (max of {len(seen)} samples): {max(seen)}; pools {POOL} + 1; clients 20")


def test_a_saturated_pool_does_not_turn_the_api_unready(tmp_root: Path, tmp_path: Path) -> None:
    """Every server connection of the traffic's pool held by a transaction: /readyz, through its
    own entry, still answers 200 (in the traffic's pool it would wait past its deadline, and every
    pod of a fleet would leave its Service at once)."""
    with jotc_provision.fresh_database(server_url(), migrate_with=migrate_command()) as direct_url:
        database = direct_url.rsplit("/", 1)[1]
        entries = {f"{database}_readiness": (database, 1)}
        bouncer = PgBouncer(tmp_path / "pgbouncer", server_url(), pool_size=POOL, entries=entries)
        bouncer.start()
        holders: list[psycopg.Connection[tuple[object, ...]]] = []
        server = None
        try:
            pooled = bouncer.url(direct_url)
            server = start_api(
                pooled,
                tmp_root,
                JOTC_DB_POOLER="transaction",
                JOTC_READINESS_DATABASE_URL=bouncer.url(direct_url, f"{database}_readiness"),
                JOTC_WORKERS="1",
            )
            for _ in range(POOL):  # each holds a server connection until its transaction ends
                holder = psycopg.connect(pooled)
                holder.execute("SELECT 1")
                holders.append(holder)
            with psycopg.connect(direct_url, autocommit=True) as db:
                assert len(backends(db)) >= POOL, "the traffic's pool is taken"
            with httpx.Client(base_url=server.base_url, timeout=30) as http:
                answers = [http.get("/readyz") for _ in range(5)]
            assert [answer.status_code for answer in answers] == [200] * 5, answers[-1].text
        finally:
            for holder in holders:
                holder.close()
            if server is not None:
                server.stop()
            bouncer.stop()


def test_after_a_pooler_restart_the_first_requests_are_recorded_not_refused(tmp_root: Path, tmp_path: Path) -> None:
    """PgBouncer restarted while the API is idle closes every client connection it held: the
    recorder's writers, which keep theirs between batches, find them closed before sending and
    connect afresh, so no request after the restart is answered 503."""
    with jotc_provision.fresh_database(server_url(), migrate_with=migrate_command()) as direct_url:
        bouncer = PgBouncer(tmp_path / "pgbouncer", server_url(), pool_size=POOL)
        bouncer.start()
        server = None
        try:
            server = start_api(bouncer.url(direct_url), tmp_root, JOTC_DB_POOLER="transaction", JOTC_WORKERS="1")
            with httpx.Client(base_url=server.base_url, timeout=30) as http:
                body = {"clouds": [0, 0, 1, 0, 0], "user": "restarted"}
                before = [http.post("/jumps", json=body).status_code for _ in range(20)]
                bouncer.stop()
                bouncer.start()
                after = [http.post("/jumps", json=body) for _ in range(20)]
        finally:
            if server is not None:
                server.stop()
            bouncer.stop()
        assert before == [201] * 20
        assert [answer.status_code for answer in after] == [201] * 20, [a.text for a in after if a.status_code != 201]
