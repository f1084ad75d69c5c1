"""Service-objective gates: after a run, compare failure ratio, p95 and p99 with the limits set in
the environment, print each verdict, and make Locust exit non-zero when one is missed."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Objectives:
    max_failure_ratio: float
    p95_ms: float
    p99_ms: float

    @classmethod
    def from_env(cls) -> Objectives:
        return cls(
            max_failure_ratio=float(os.environ.get("JOTC_SLO_MAX_FAILURE_RATIO", "0.01")),
            p95_ms=float(os.environ.get("JOTC_SLO_P95_MS", "250")),
            p99_ms=float(os.environ.get("JOTC_SLO_P99_MS", "1000")),
        )


def verdicts(objectives: Objectives, requests: int, failures: int, p95_ms: float, p99_ms: float) -> list[str]:
    """Every missed objective, as a sentence; empty when all were met (or nothing was sent)."""
    missed = []
    if requests == 0:
        return ["no request was made: is the target reachable?"]
    ratio = failures / requests
    if ratio > objectives.max_failure_ratio:
        missed.append(
            f"failure ratio {ratio:.4f} ({failures} of {requests}) above JOTC_SLO_MAX_FAILURE_RATIO "
            f"{objectives.max_failure_ratio}"
        )
    if p95_ms > objectives.p95_ms:
        missed.append(f"p95 {p95_ms:.0f} ms above JOTC_SLO_P95_MS {objectives.p95_ms:.0f}")
    if p99_ms > objectives.p99_ms:
        missed.append(f"p99 {p99_ms:.0f} ms above JOTC_SLO_P99_MS {objectives.p99_ms:.0f}")
    return missed


def apply_gates(environment: Any) -> None:
    """Locust `quitting` listener (on the master or a standalone runner, never on workers)."""
    total = environment.stats.total
    missed = verdicts(
        Objectives.from_env(),
        total.num_requests,
        total.num_failures,
        total.get_response_time_percentile(0.95) or 0.0,
        total.get_response_time_percentile(0.99) or 0.0,
    )
    if missed:
        for line in missed:
            print(f"jotc-loadtest: SERVICE OBJECTIVE MISSED: {line}", flush=True)
        environment.process_exit_code = 1
    else:
        print("jotc-loadtest: all service objectives met", flush=True)
