"""jotc-loadtest headless: clean against the real API, failing its gates against a bad target."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import ADMIN_TOKEN, run_loadtest

from jotc_loadtest.entrypoint import locust_arguments
from jotc_loadtest.gates import Objectives, verdicts
from jotc_loadtest.reference import min_jumps


def test_a_short_run_against_the_real_api_is_clean(api_url: str, tmp_path: Path) -> None:
    result = run_loadtest(api_url, tmp_path, 15, JOTC_ADMIN_TOKEN=ADMIN_TOKEN)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "all service objectives met" in result.stdout + result.stderr
    reports = tmp_path / "reports"
    assert (reports / "report.html").stat().st_size > 0
    with (reports / "report_stats.csv").open() as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    aggregated = rows.pop("Aggregated")
    assert int(aggregated["Request Count"]) > 100
    assert aggregated["Failure Count"] == "0"
    names = set(rows)
    for expected in (
        "POST /jumps [json array]",
        "POST /jumps [digit string]",
        "POST /jumps [text/plain]",
        "GET /jumps/{id}",
        "POST /jumps [idempotent retry]",
        "GET /admin/stats",
    ):
        assert expected in names, names
    assert any(name.startswith("POST /jumps [invalid:") for name in names)


class FakeApi(BaseHTTPRequestHandler):
    """Answers POST /jumps like the API would, but wrong (or slowly), for the gates to catch."""

    wrong = False
    delay = 0.0

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
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
    handler = type("Handler", (FakeApi,), {"wrong": wrong, "delay": delay})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


ONLY_JSON = {
    f"JOTC_LT_WEIGHT_{task}": "0"
    for task in ("CLASSIC_DIGITS", "CLASSIC_TEXT", "LARGE", "INVALID", "READ_BACK", "IDEMPOTENT_RETRY", "ADMIN")
}


def test_wrong_answers_fail_the_run(tmp_path: Path) -> None:
    with fake_api(wrong=True) as target:
        result = run_loadtest(target, tmp_path, 5, **ONLY_JSON)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "wrong answer" in output
    assert "SERVICE OBJECTIVE MISSED: failure ratio" in output


def test_slow_answers_fail_the_latency_gates(tmp_path: Path) -> None:
    with fake_api(delay=0.3) as target:
        result = run_loadtest(target, tmp_path, 5, JOTC_SLO_P95_MS="100", JOTC_SLO_P99_MS="150", **ONLY_JSON)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "SERVICE OBJECTIVE MISSED: p95" in output
    assert "SERVICE OBJECTIVE MISSED: p99" in output
    assert "failure ratio" not in output.split("SERVICE OBJECTIVE MISSED")[-1]


def test_verdicts() -> None:
    objectives = Objectives(max_failure_ratio=0.01, p95_ms=100, p99_ms=200)
    assert verdicts(objectives, 1000, 10, 100, 200) == []
    assert len(verdicts(objectives, 1000, 11, 101, 201)) == 3
    assert verdicts(objectives, 0, 0, 0, 0) == ["no request was made: is the target reachable?"]


@pytest.mark.parametrize(
    ("role", "expected"),
    [
        ("worker", ["--worker"]),
        ("master", ["--master"]),
        ("headless", ["--headless", "--csv", "--html"]),
        ("headless-master", ["--master", "--headless"]),
    ],
)
def test_roles(role: str, expected: list[str], tmp_path: Path) -> None:
    arguments = locust_arguments({"LOCUST_ROLE": role, "JOTC_REPORT_DIR": str(tmp_path)})
    for flag in expected:
        assert flag in arguments
    assert "--host" in arguments


def test_unknown_role_is_refused() -> None:
    with pytest.raises(SystemExit, match="LOCUST_ROLE must be one of"):
        locust_arguments({"LOCUST_ROLE": "boss"})


def test_a_mounted_locustfile_replaces_the_built_in_one(tmp_path: Path) -> None:
    arguments = locust_arguments({"LOCUST_LOCUSTFILE": "/locustfile/locustfile.py", "JOTC_REPORT_DIR": str(tmp_path)})
    assert arguments[:2] == ["-f", "/locustfile/locustfile.py"]
    assert locust_arguments({})[1].endswith("jotc_loadtest/locustfile.py")


# Picks tasks as a running Locust user does (the user's DefaultTaskSet, seeded) from the locustfile as
# Locust loads it; prints how often each task came up, and the locustfile's default weights. A separate
# process: importing Locust patches the interpreter with gevent.
PICK_TASKS = """
import collections, json, random, sys
from locust.env import Environment
from locust.user.task import DefaultTaskSet
from locust.util.load_locustfile import load_locustfile
import jotc_loadtest.locustfile as scenarios

users, _ = load_locustfile(scenarios.__file__)
(user_class,) = users.values()
environment = Environment(user_classes=[user_class])
# What the runner does before it spawns users (this is where a dict set after the class was built
# became its bare keys); the host is never contacted.
environment._filter_tasks_by_tags()
user_class.host = "http://127.0.0.1:9"
user = user_class(environment)
random.seed(20261127)
picks = collections.Counter(DefaultTaskSet(user).get_next_task().__name__ for _ in range(int(sys.argv[1])))
print(json.dumps({"picks": picks, "defaults": scenarios.DEFAULT_WEIGHTS}))
"""
PICKS = 20_000


def pick_tasks(**env: str) -> tuple[dict[str, float], dict[str, int]]:
    """(share of picks per task, the default weights) with only these JOTC_LT_WEIGHT_* / token set."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("JOTC_LT_WEIGHT_", "JOTC_ADMIN_TOKEN"))}
    result = subprocess.run(
        [sys.executable, "-c", PICK_TASKS, str(PICKS)],
        env={**inherited, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    return {task: count / PICKS for task, count in report["picks"].items()}, report["defaults"]


def assert_mix(shares: dict[str, float], weights: dict[str, int], tolerance: float = 0.015) -> None:
    total = sum(weights.values())
    expected = {task: weight / total for task, weight in weights.items() if weight}
    assert set(shares) == set(expected)
    for task, share in expected.items():
        assert abs(shares[task] - share) <= tolerance, f"{task}: {shares[task]:.3f} of picks, weight says {share:.3f}"


def test_the_task_mix_follows_the_default_weights() -> None:
    shares, defaults = pick_tasks(JOTC_ADMIN_TOKEN=ADMIN_TOKEN)
    assert_mix(shares, defaults)


def test_the_task_mix_follows_weights_from_the_environment() -> None:
    changed = {"JOTC_LT_WEIGHT_CLASSIC_JSON": "5", "JOTC_LT_WEIGHT_LARGE": "0", "JOTC_LT_WEIGHT_INVALID": "60"}
    shares, defaults = pick_tasks(**changed)
    # No admin token: the admin task is off as well.
    assert_mix(shares, {**defaults, "classic_json": 5, "large": 0, "invalid": 60, "admin": 0})
