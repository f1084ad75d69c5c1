"""scripts/prober against real API instances behind HAProxy on 127.0.0.1, brought up by scripts/fleet's
own parts (fleet_parts: instances, the balancer; fleet_run: the rolling restart): through a rolling
restart every request is answered 2xx and every record it was told of is in PostgreSQL; with the only
instance stopped, the prober counts what failed and exits 1. Judged on answers, never on time."""

from __future__ import annotations

import http.server
import json
import os
import signal
import ssl
import subprocess
import threading
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


def run_prober(
    url: str, directory: Path, *options: str, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], dict[str, dict[str, int]]]:
    """scripts/prober for one second: how it ended, and the counts it wrote."""
    counts = directory / "counts.json"
    ran = subprocess.run(
        [str(PROBER), url, "--duration", "1", "--json", str(counts), *options],
        capture_output=True,
        text=True,
        check=False,
        timeout=STOP_SECONDS,
        env=None if env is None else {**os.environ, **env},
    )
    return ran, json.loads(counts.read_text()) if counts.exists() else {}


class StandIn(http.server.ThreadingHTTPServer):
    """An API stand-in on 127.0.0.1: POST /jumps answers 201, with a Location when `location` is
    on; GET answers 200. It keeps each request's Host header and, over TLS, each server name asked."""

    location = True
    hosts: list[str]
    server_names: list[str | None]


class StandInHandler(http.server.BaseHTTPRequestHandler):
    server: StandIn

    def answer(self, status: int, location: str = "") -> None:
        self.server.hosts.append(self.headers.get("Host", ""))
        self.send_response(status)
        if location:
            self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.answer(201, "/jumps/0192f0c4-0000-7000-8000-000000000000" if self.server.location else "")

    def do_GET(self) -> None:
        self.answer(200)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the counts say what happened."""


@contextmanager
def stand_in(*, location: bool = True, tls: ssl.SSLContext | None = None) -> Iterator[StandIn]:
    server = StandIn(("127.0.0.1", 0), StandInHandler)
    server.location, server.hosts, server.server_names = location, [], []
    if tls is not None:
        tls.sni_callback = lambda _socket, name, _context: server.server_names.append(name)
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_record_created_without_a_location_is_a_failure(tmp_path: Path) -> None:
    """The API names every record it creates; without the name the round cannot read it back."""
    with stand_in(location=False) as server:
        ran, counts = run_prober(f"http://127.0.0.1:{server.server_port}", tmp_path)
    assert ran.returncode == 1, ran.stdout + ran.stderr
    assert set(counts) == {"POST /jumps"}, counts
    assert set(counts["POST /jumps"]) == {"201 without Location"}, counts
    assert "requests failed (201 without Location: " in ran.stdout, ran.stdout


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed certificate for jotc.test (no address), its key beside it as key.pem."""
    directory = tmp_path_factory.mktemp("tls")
    command = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    command += ["-keyout", str(directory / "key.pem"), "-out", str(directory / "cert.pem"), "-days", "2"]
    command += ["-subj", "/CN=jotc.test", "-addext", "subjectAltName=DNS:jotc.test"]
    made = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert made.returncode == 0, f"openssl could not make the test certificate: {made.stderr}"
    return directory / "cert.pem"


def test_over_https_tls_names_the_host_not_the_address_connected_to(certificate: Path, tmp_path: Path) -> None:
    """An ingress probed at its address serves the certificate of the Host it routes."""
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(certificate, certificate.with_name("key.pem"))
    trusted = {"SSL_CERT_FILE": str(certificate)}  # the prober's default context trusts it
    with stand_in(tls=tls) as server:
        url = f"https://127.0.0.1:{server.server_port}"
        ran, counts = run_prober(url, tmp_path, "--host", "jotc.test", env=trusted)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert set(counts) == {"POST /jumps", "GET /jumps/{id}"}, counts
        assert set(server.server_names) == {"jotc.test"}
        assert set(server.hosts) == {"jotc.test"}
        # The certificate is still checked: it does not name the address.
        ran, counts = run_prober(url, tmp_path, env=trusted)
    assert ran.returncode == 1, ran.stdout + ran.stderr
    assert set(counts) == {"POST /jumps"}, counts
    assert set(counts["POST /jumps"]) == {"no answer"}, counts
    assert "SSLCertVerificationError" in ran.stderr, ran.stderr


def test_nothing_listening_is_no_answer_and_exit_1(tmp_path: Path) -> None:
    port = jotc_provision.free_port()
    ran, found = run_prober(f"http://127.0.0.1:{port}", tmp_path)
    assert ran.returncode == 1, ran.stdout + ran.stderr
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
