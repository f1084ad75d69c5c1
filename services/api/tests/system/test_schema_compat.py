"""The compatibility window, end to end: the running build keeps serving (ready, recording) while
the database moves one revision ahead, a rolled-back build comes up ready on it, an incompatible
or older database is refused, and a migration stuck behind a long reader never stalls POST /jumps.

"One revision ahead" is a test-only migration from services/db-migrations/tests/revisions, passed
to jotc-migrate as an extra version location: this build has no file for it, exactly like an old
image after a newer release migrated."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg
import pytest
from jotc_provision import wait_until
from support import ApiServer, fresh_database, migrate_command, start_api

from jotc_api.schema_compat import judge
from jotc_api.tables import SCHEMA_REVISION

REVISIONS = Path(__file__).resolve().parents[3] / "db-migrations" / "tests" / "revisions"
BODY = {"clouds": [0, 0, 1, 0, 0, 1, 0], "user": "compat@example.com"}


def jotc_migrate(database_url: str, *args: str, scenario: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    extra = {"JOTC_MIGRATE_EXTRA_VERSIONS": str(REVISIONS / scenario)} if scenario else {}
    return subprocess.run(
        [migrate_command(), *args],
        env={**os.environ, "DATABASE_URL": database_url, **extra, **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@contextmanager
def api_on(database_url: str, tmp: Path) -> Iterator[ApiServer]:
    server = start_api(database_url, tmp, JOTC_WORKERS="1")
    try:
        yield server
    finally:
        server.stop()


def wait_ready(server: ApiServer) -> httpx.Response:
    """/readyz's answer once it is 200 (within 15 s; otherwise its last answer is the failure)."""
    answers: list[httpx.Response] = []

    def ready() -> bool:
        answers.append(httpx.get(f"{server.base_url}/readyz", timeout=5))
        return answers[-1].status_code == 200

    try:
        wait_until(ready, timeout=15, what="/readyz answering 200", interval=0.05)
    except TimeoutError as error:
        raise AssertionError(f"{error}; its last answer: {answers[-1].status_code} {answers[-1].text}") from None
    return answers[-1]


class Traffic:
    """A client that keeps asking /readyz and posting /jumps until stopped; records when each POST
    was sent and what answered it (a status, or the error of a request that got no answer)."""

    def __init__(self, server: ApiServer) -> None:
        self.server = server
        self.ready: list[int | str] = []
        self.posted: list[tuple[float, int | str]] = []  # (sent at, monotonic; the status or error)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        with httpx.Client(base_url=self.server.base_url, timeout=15) as http:
            while not self.stop.is_set():
                self.ready.append(answer_of(lambda: http.get("/readyz")))
                sent = time.monotonic()
                self.posted.append((sent, answer_of(lambda: http.post("/jumps", json=BODY))))

    def posted_between(self, began: float, ended: float) -> list[int | str]:
        return [answer for sent, answer in self.posted if began <= sent <= ended]

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def answer_of(request: Callable[[], httpx.Response]) -> int | str:
    """The status of the answer, or what kept it from coming."""
    try:
        return request().status_code
    except httpx.HTTPError as error:
        return f"{type(error).__name__}: {error}"


def test_a_running_build_stays_ready_and_records_while_the_schema_moves_one_revision_ahead(tmp_root: Path) -> None:
    with fresh_database() as url, api_on(url, tmp_root) as api:
        assert wait_ready(api).status_code == 200
        with Traffic(api) as traffic:
            # Steady traffic first, then the migration under it, then traffic on the new schema.
            wait_until(lambda: len(traffic.posted) >= 5, timeout=15, what="the traffic under way (5 POSTs answered)")
            upgraded = jotc_migrate(url, "upgrade", scenario="expand")
            before = len(traffic.ready)
            wait_until(
                lambda: len(traffic.ready) >= before + 20,
                timeout=30,
                what="20 more /readyz answers after the migration",
            )
        assert upgraded.returncode == 0, f"jotc-migrate upgrade exited {upgraded.returncode}:\n{upgraded.stderr}"
        assert "to t_expand" in upgraded.stderr
        assert set(traffic.ready) == {200}, f"/readyz was not always 200: {Counter(traffic.ready)}"
        posted = Counter(answer for _, answer in traffic.posted)
        assert set(posted) == {201}, f"POST /jumps was not always 201: {posted}"
        schema = httpx.get(f"{api.base_url}/readyz").json()["checks"]["schema"]
        assert schema["status"] == "ok"
        assert schema["revision"] == SCHEMA_REVISION
        assert schema["database_revision"] == "t_expand"


def test_a_rolled_back_build_comes_up_ready_on_a_newer_compatible_schema(tmp_root: Path) -> None:
    with fresh_database() as url:
        assert jotc_migrate(url, "upgrade", scenario="expand").returncode == 0
        # The rolled-back pod: its init container (this build's jotc-migrate, no t_expand file) ...
        init = jotc_migrate(url, "check", "--wait", "5")
        assert init.returncode == 0, f"jotc-migrate check exited {init.returncode}:\n{init.stderr}"
        # ... then the API itself, which serves and records.
        with api_on(url, tmp_root) as api:
            ready = wait_ready(api)
            assert ready.status_code == 200, ready.text
            created = httpx.post(f"{api.base_url}/jumps", json=BODY)
            assert created.status_code == 201, created.text
            read = httpx.get(f"{api.base_url}/jumps/{created.json()['id']}")
            assert read.status_code == 200


def test_the_release_guard_keeps_the_api_ready_and_a_breaking_step_forced_past_it_is_refused_by_readyz(
    tmp_root: Path,
) -> None:
    """jotc-migrate refuses a contract step the serving build cannot serve, and the running API stays
    ready; forced (JOTC_MIGRATE_ALLOW_BREAKING), the step commits and the API's /readyz names both
    revisions."""
    with fresh_database() as url, api_on(url, tmp_root) as api:
        assert wait_ready(api).status_code == 200
        refused = jotc_migrate(url, "upgrade", scenario="contract")
        assert refused.returncode == 1, refused.stderr
        said = refused.stderr.strip().splitlines()[-1]
        assert "t_contract" in said, refused.stderr
        assert SCHEMA_REVISION in said, refused.stderr
        assert httpx.get(f"{api.base_url}/readyz").status_code == 200
        assert jotc_migrate(url, "check").returncode == 0

        forced = jotc_migrate(url, "upgrade", scenario="contract", JOTC_MIGRATE_ALLOW_BREAKING="1")
        assert forced.returncode == 0, forced.stderr
        assert jotc_migrate(url, "check").returncode == 1
        response = httpx.get(f"{api.base_url}/readyz")
        assert response.status_code == 503
        schema = response.json()["checks"]["schema"]
        assert schema["status"] == "failing"
        assert "t_contract" in schema["detail"]
        assert SCHEMA_REVISION in schema["detail"]


def test_the_guard_keeps_the_revision_a_running_api_reports_serving(tmp_root: Path) -> None:
    """The API reports the revision it serves (jotc_schema_readers); after an expand step, a contract
    step compatible back only to the expand is refused because of that report: judged by the
    database's revision alone (t_expand), it would pass and strand the running API."""
    with fresh_database() as url, api_on(url, tmp_root) as api:
        assert wait_ready(api).status_code == 200

        def reported() -> bool:
            with psycopg.connect(url, autocommit=True) as connection:
                rows = connection.execute("SELECT revision FROM jotc_schema_readers").fetchall()
            return rows == [(SCHEMA_REVISION,)]

        wait_until(reported, timeout=30, what="the API's report of the revision it serves")
        assert jotc_migrate(url, "upgrade", scenario="expand").returncode == 0
        both = os.pathsep.join(str(REVISIONS / name) for name in ("expand", "contract_after_expand"))
        refused = jotc_migrate(url, "upgrade", JOTC_MIGRATE_EXTRA_VERSIONS=both)
        assert refused.returncode == 1, refused.stderr
        said = refused.stderr.strip().splitlines()[-1]
        assert "reported by running pods" in said, refused.stderr
        assert SCHEMA_REVISION in said, refused.stderr
        assert httpx.get(f"{api.base_url}/readyz").status_code == 200


def test_posts_keep_answering_201_while_a_migration_waits_behind_a_long_reader(tmp_root: Path) -> None:
    with fresh_database() as url, api_on(url, tmp_root) as api:
        assert wait_ready(api).status_code == 200
        with psycopg.connect(url) as reader, Traffic(api) as traffic:
            reader.execute("SELECT count(*) FROM jump_requests")  # ACCESS SHARE until rollback
            started = time.monotonic()
            stuck = jotc_migrate(
                url,
                "upgrade",
                scenario="expand",
                JOTC_MIGRATE_LOCK_TIMEOUT="1",
                JOTC_MIGRATE_LOCK_RETRIES="2",
            )
            elapsed = time.monotonic() - started
            reader.rollback()
        assert stuck.returncode == 3, f"the stuck migration exited {stuck.returncode}, not 3:\n{stuck.stderr}"
        assert "gave up after 3 attempts" in stuck.stderr
        assert "(lock_timeout 1 s)" in stuck.stderr, stuck.stderr
        # 3 attempts of 1 s and ~3 s of back-off: the bound is for a migration that hangs, with room
        # for a slow start-up on a loaded machine.
        assert elapsed < 60, f"the stuck migration took {elapsed:.1f} s to give up"
        # A POST queued behind the migration's lock request waits out one lock_timeout at most, then
        # is answered: every POST sent while the migration tried is answered 201, none lost.
        waited = Counter(traffic.posted_between(started, started + elapsed))
        assert waited, "no POST was sent while the migration waited"
        assert set(waited) == {201}, f"POST /jumps while the migration waited: {waited}"
        posted = Counter(answer for _, answer in traffic.posted)
        assert set(posted) == {201}, f"POST /jumps was not always 201: {posted}"
        assert set(traffic.ready) == {200}, f"/readyz was not always 200: {Counter(traffic.ready)}"


@pytest.mark.parametrize(
    ("args", "serves", "said"),
    [
        (("0002", "0002"), True, ""),
        (("0002", None), False, "never migrated"),
        (("0002", "0001", 1, "0001", 1, None), False, "older than 0002"),
        (("0002", "0003", 3, "0002", 2, 2), True, "compatible back to 0002"),
        (("0002", "0004", 4, "0003", 3, 2), False, "compatible back to 0003 only"),
        (("0002", "0003"), False, "no compatibility record"),
    ],
)
def test_the_rule(args: tuple[str, ...], serves: bool, said: str) -> None:
    verdict = judge(*args)  # type: ignore[arg-type]
    assert verdict.serves is serves
    assert said in verdict.detail
