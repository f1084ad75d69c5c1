"""The service-objective gates as plain logic, in process: which objectives a run missed, the
limits read from the environment, and what a finished run prints and exits with. The same gates
failing real Locust runs: system/test_loadtest.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from jotc_loadtest.gates import Objectives, apply_gates, verdicts


def test_verdicts() -> None:
    objectives = Objectives(max_failure_ratio=0.01, p95_ms=100, p99_ms=200)
    met = verdicts(objectives, 1000, 10, 100, 200)
    assert met == [], f"limits reached but not passed are met: {met}"
    missed = verdicts(objectives, 1000, 11, 101, 201)
    assert len(missed) == 3, f"every limit passed should be a verdict: {missed}"
    nothing = verdicts(objectives, 0, 0, 0, 0)
    assert nothing == ["no request was made: is the target reachable?"], f"a run with no requests: {nothing}"


def test_each_verdict_names_its_figure_and_its_setting() -> None:
    objectives = Objectives(max_failure_ratio=0.01, p95_ms=100, p99_ms=200)
    ratio, p95, p99 = verdicts(objectives, 1000, 20, 150, 250)
    assert ratio == "failure ratio 0.0200 (20 of 1000) above JOTC_SLO_MAX_FAILURE_RATIO 0.01", ratio
    assert p95 == "p95 150 ms above JOTC_SLO_P95_MS 100", p95
    assert p99 == "p99 250 ms above JOTC_SLO_P99_MS 200", p99


def test_objectives_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("JOTC_SLO_MAX_FAILURE_RATIO", "JOTC_SLO_P95_MS", "JOTC_SLO_P99_MS"):
        monkeypatch.delenv(variable, raising=False)
    defaults = Objectives.from_env()
    assert defaults == Objectives(0.01, 250, 1000), f"defaults: {defaults}"
    monkeypatch.setenv("JOTC_SLO_MAX_FAILURE_RATIO", "0.05")
    monkeypatch.setenv("JOTC_SLO_P95_MS", "80")
    monkeypatch.setenv("JOTC_SLO_P99_MS", "300")
    assert Objectives.from_env() == Objectives(0.05, 80, 300), f"from the environment: {Objectives.from_env()}"


def finished_run(requests: int, failures: int, p95: float | None, p99: float | None) -> SimpleNamespace:
    """What the gates read of a Locust environment after a run."""
    percentiles = {0.95: p95, 0.99: p99}
    total = SimpleNamespace(
        num_requests=requests,
        num_failures=failures,
        get_response_time_percentile=lambda p: percentiles[p],
    )
    return SimpleNamespace(stats=SimpleNamespace(total=total), process_exit_code=None)


@pytest.fixture
def default_objectives(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("JOTC_SLO_MAX_FAILURE_RATIO", "JOTC_SLO_P95_MS", "JOTC_SLO_P99_MS"):
        monkeypatch.delenv(variable, raising=False)


@pytest.mark.usefixtures("default_objectives")
def test_a_run_that_meets_every_objective_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    environment = finished_run(1000, 0, 40, None)  # None: Locust has no percentile yet
    apply_gates(environment)
    printed = capsys.readouterr().out
    assert printed == "jotc-loadtest: all service objectives met\n", f"printed {printed!r}"
    assert environment.process_exit_code is None, "a clean run's exit code was set"


@pytest.mark.usefixtures("default_objectives")
def test_a_missed_objective_is_printed_and_fails_the_process(capsys: pytest.CaptureFixture[str]) -> None:
    environment = finished_run(100, 50, 300, 400)
    apply_gates(environment)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2, f"expected the failure ratio and p95 missed: {lines}"
    assert all(line.startswith("jotc-loadtest: SERVICE OBJECTIVE MISSED: ") for line in lines), lines
    assert environment.process_exit_code == 1, f"exit code {environment.process_exit_code}, expected 1"
