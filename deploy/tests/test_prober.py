"""scripts/prober against real API instances behind HAProxy on 127.0.0.1, brought up by scripts/fleet's
own parts (fleet_parts: instances, the balancer; fleet_run: the rolling restart): through a rolling
restart every request is answered 2xx and every record it was told of is in PostgreSQL; with the only
instance stopped, the prober counts what failed and exits 1. Judged on answers, never on time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import common
import fleet
import fleet_parts
import fleet_run
import jotc_provision
import psycopg
import pytest
from fleet_parts import Balancer, Instance
from support import ROOT

PROBER = ROOT / "scripts/prober"
SERVER = os.environ.get("DATABASE_URL") or jotc_provision.DEFAULT_DATABASE_URL
MIGRATE = common.venv_command("db-migrations", "jotc-migrate")
RATE = "20"  # rounds a second: 40 requests a second, light for two instances of one worker
# SIGTERMed, the prober ends its rounds in flight (each request bounded by its 10 s timeout); past
# this it hangs.
STOP_SECONDS = 60


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    """A fresh database at the schema's head, for the instances of this module; the servers they
    need present (HAProxy from Debian as root, as scripts/fleet installs it; the services' locked
    environments)."""
    if "haproxy" in fleet.missing_servers():
        if not common.can_install():
            pytest.fail("haproxy is not installed, and cannot be here (needs root): apt-get install haproxy")
        common.apt_install("haproxy")
    for service, command in (("api", "jotc-api"), ("db-migrations", "jotc-migrate")):
        if not Path(common.venv_command(service, command)).exists():
            common.use_uv()
            assert common.sync(common.SERVICES / service), f"services/{service}: uv sync --locked failed"
    with jotc_provision.fresh_database(SERVER, prefix="jotc_prober", migrate_with=MIGRATE) as url:
        yield url


@dataclass
class Probing:
    """scripts/prober running in the background until stopped; its output in files, read as it runs."""

    process: subprocess.Popen[bytes]
    directory: Path

    def output(self) -> str:
        return "".join((self.directory / name).read_text() for name in ("prober.out", "prober.err"))

    def stop(self) -> tuple[int, str, dict[str, dict[str, int]]]:
        """SIGTERM: its exit status, its output, and the counts it wrote."""
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"the prober still ran {STOP_SECONDS} s after SIGTERM:\n{self.output()}") from None
        counts_file = self.directory / "prober.json"
        counts = json.loads(counts_file.read_text()) if counts_file.exists() else {}
        return self.process.returncode, self.output(), counts


def start_prober(url: str, directory: Path) -> Probing:
    command = [str(PROBER), url, "--rate", RATE, "--json", str(directory / "prober.json")]
    with (directory / "prober.out").open("wb") as out, (directory / "prober.err").open("wb") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err)
    return Probing(process, directory)


def prober_rows(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as connection:
        row = connection.execute("SELECT count(*) FROM jump_requests WHERE user_name = 'jotc-prober'").fetchone()
    return int(row[0]) if row else 0


@contextmanager
def probing_a_fleet(count: int, database: str, directory: Path) -> Iterator[tuple[list[Instance], Balancer, Probing]]:
    """`count` instances behind HAProxy and the prober sending through it, yielded once its first
    record is written; the prober (if still running) and the instances stopped afterwards."""
    before = prober_rows(database)
    settings = {"DATABASE_URL": database, "JOTC_RATE_LIMIT": "0"}
    instances = fleet_parts.start_instances(count, settings, directory / "logs")
    try:
        with Balancer(directory / "haproxy", {i.name: i.port for i in instances}) as balancer:
            balancer.wait_all("UP")
            probing = start_prober(balancer.url, directory)
            try:
                jotc_provision.wait_until(
                    lambda: prober_rows(database) > before, timeout=30, what="the prober's first record written"
                )
                yield instances, balancer, probing
            finally:
                jotc_provision.stop_process(probing.process, timeout=STOP_SECONDS)
    finally:
        fleet_parts.stop_instances(instances)


def test_through_a_rolling_restart_every_request_is_answered_2xx(database: str, tmp_path: Path) -> None:
    before = prober_rows(database)
    did: list[str] = []
    with probing_a_fleet(2, database, tmp_path) as (instances, balancer, probing):
        fleet_run.rolling_restart(instances, balancer, did)
        code, output, counts = probing.stop()
    assert [instance.starts for instance in instances] == [2, 2], did
    assert code == 0, output
    assert "prober: every request answered 2xx" in output
    assert set(counts) == {"POST /jumps", "GET /jumps/{id}"}, counts
    assert set(counts["POST /jumps"]) == {"201"}, counts
    assert set(counts["GET /jumps/{id}"]) == {"200"}, counts
    created = counts["POST /jumps"]["201"]
    assert counts["GET /jumps/{id}"]["200"] == created, "each record created was read back"
    assert prober_rows(database) - before == created, "every record acknowledged is in PostgreSQL"


def test_with_the_only_instance_stopped_the_prober_counts_the_failures_and_exits_1(
    database: str, tmp_path: Path
) -> None:
    with probing_a_fleet(1, database, tmp_path) as (instances, _, probing):
        instances[0].terminate()  # drains, exits; nothing else is up
        jotc_provision.wait_until(
            lambda: "POST /jumps: 503" in probing.output(), timeout=30, what="the prober seeing HAProxy's 503"
        )
        code, output, counts = probing.stop()
    assert code == 1, output
    assert counts["POST /jumps"].get("201", 0) > 0, counts
    failed: Counter[str] = Counter()
    for outcomes in counts.values():
        failed.update({outcome: count for outcome, count in outcomes.items() if not outcome.startswith("2")})
    assert failed, counts
    assert set(failed) <= {"503", "502", "no answer"}, counts
    assert f"prober: FAILED: {failed.total()} of " in output, output


def test_nothing_listening_is_no_answer_and_exit_1(tmp_path: Path) -> None:
    port = jotc_provision.free_port()
    counts = tmp_path / "counts.json"
    ran = subprocess.run(
        [str(PROBER), f"http://127.0.0.1:{port}", "--duration", "1", "--json", str(counts)],
        capture_output=True,
        text=True,
        check=False,
        timeout=STOP_SECONDS,
    )
    assert ran.returncode == 1, ran.stdout + ran.stderr
    found = json.loads(counts.read_text())
    assert set(found) == {"POST /jumps"}, found
    assert set(found["POST /jumps"]) == {"no answer"}, found
    assert found["POST /jumps"]["no answer"] >= 1
    assert "ConnectionRefusedError" in ran.stderr


def test_help_and_a_wrong_option() -> None:
    shown = subprocess.run([str(PROBER), "--help"], capture_output=True, text=True, check=False, timeout=30)
    assert shown.returncode == 0, shown.stderr
    for word in ("--rate", "--duration", "--in-flight", "--host", "--json", "POST /jumps", "GET /jumps/{id}"):
        assert word in shown.stdout, shown.stdout
    refused = subprocess.run(
        [str(PROBER), "ftp://example", "--duration", "1"], capture_output=True, text=True, check=False, timeout=30
    )
    assert refused.returncode == 2, refused.stderr
    assert "not an http(s) URL" in refused.stderr
