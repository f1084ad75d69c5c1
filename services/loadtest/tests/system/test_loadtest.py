"""jotc-loadtest headless, as Locust processes: clean against the real API (Granian), failing its
gates against a target that answers wrongly or slowly. The gates, roles and scenarios as plain
logic: unit/."""

from __future__ import annotations

import csv
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from support import ADMIN_TOKEN, output_of, run_loadtest

from jotc_loadtest.reference import min_jumps

# Every task weighted alike, an eighth of the picks each, so that even a slow run picks every one
# (the default mix's shares are the unit tests' to check; at 2 %, the admin pages could go unpicked
# in a short run on a busy machine).
TASKS = ("CLASSIC_JSON", "CLASSIC_DIGITS", "CLASSIC_TEXT", "LARGE", "INVALID", "READ_BACK", "IDEMPOTENT_RETRY", "ADMIN")
EVEN = {f"JOTC_LT_WEIGHT_{task}": "1" for task in TASKS}
# Latency is judged against a fake that answers slowly on purpose (below); against the real API
# on a shared machine, the run is judged by its answers, and only a hang reaches these.
HANG_SLO_MS = {"JOTC_SLO_P95_MS": "30000", "JOTC_SLO_P99_MS": "30000"}


def test_a_short_run_against_the_real_api_is_clean(api_url: str, tmp_path: Path) -> None:
    result = run_loadtest(api_url, tmp_path, 15, JOTC_ADMIN_TOKEN=ADMIN_TOKEN, **EVEN, **HANG_SLO_MS)
    assert result.returncode == 0, f"the run against the real API failed: {output_of(result)}"
    output = result.stdout + result.stderr
    assert "all service objectives met" in output, f"no verdict line: {output_of(result)}"
    reports = tmp_path / "reports"
    html = reports / "report.html"
    assert html.is_file(), f"no HTML report: {sorted(reports.iterdir())}"
    assert html.stat().st_size > 0, "the HTML report is empty"
    with (reports / "report_stats.csv").open() as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    aggregated = rows.pop("Aggregated")
    assert aggregated["Failure Count"] == "0", (
        f"{aggregated['Failure Count']} failures: {(reports / 'report_failures.csv').read_text()}"
    )
    names = set(rows)
    for expected in (
        "POST /jumps [json array]",
        "POST /jumps [digit string]",
        "POST /jumps [text/plain]",
        "GET /jumps/{id}",
        "POST /jumps [idempotent retry]",
        "GET /admin/stats",
    ):
        assert expected in names, f"no {expected!r} in the report: {sorted(names)}"
    assert any(name.startswith("POST /jumps [invalid:") for name in names), f"no invalid requests: {sorted(names)}"


class FakeApi(BaseHTTPRequestHandler):
    """Answers POST /jumps like the API would, but wrong (or slowly), for the gates to catch."""

    wrong = False
    delay = 0.0

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        # Not a wait for anything: a slow answer is the behaviour under test (the latency gates).
        time.sleep(self.delay)
        jumps = min_jumps(body["clouds"], body.get("max_jump", 2)) or 0
        answer = json.dumps({"id": str(uuid.uuid4()), "jumps": jumps + (1 if self.wrong else 0)}).encode()
        self.send_response(201)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *_: object) -> None:
        pass


@contextmanager
def fake_api(*, wrong: bool = False, delay: float = 0.0) -> Iterator[str]:
    """A FakeApi on a free port (the kernel's choice) for the block."""
    handler = type("Handler", (FakeApi,), {"wrong": wrong, "delay": delay})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


ONLY_JSON = {f"JOTC_LT_WEIGHT_{task}": "0" for task in TASKS if task != "CLASSIC_JSON"}


def test_wrong_answers_fail_the_run(tmp_path: Path) -> None:
    with fake_api(wrong=True) as target:
        result = run_loadtest(target, tmp_path, 5, **ONLY_JSON)
    output = result.stdout + result.stderr
    assert result.returncode != 0, f"wrong answers passed the gates: {output_of(result)}"
    assert "wrong answer" in output, f"no 'wrong answer' failure: {output_of(result)}"
    assert "SERVICE OBJECTIVE MISSED: failure ratio" in output, f"no failure-ratio verdict: {output_of(result)}"


def test_slow_answers_fail_the_latency_gates(tmp_path: Path) -> None:
    with fake_api(delay=0.3) as target:
        result = run_loadtest(target, tmp_path, 5, JOTC_SLO_P95_MS="100", JOTC_SLO_P99_MS="150", **ONLY_JSON)
    output = result.stdout + result.stderr
    assert result.returncode != 0, f"slow answers passed the gates: {output_of(result)}"
    assert "SERVICE OBJECTIVE MISSED: p95" in output, f"no p95 verdict: {output_of(result)}"
    assert "SERVICE OBJECTIVE MISSED: p99" in output, f"no p99 verdict: {output_of(result)}"
    last = output.split("SERVICE OBJECTIVE MISSED")[-1]
    assert "failure ratio" not in last, f"slow but right answers counted as failures: {output_of(result)}"
