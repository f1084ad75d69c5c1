"""scripts/fleet's figures and verdicts, as plain logic: the swarm's request records read back, each
phase's figures (requests, answers by status, p50/p99, PostgreSQL server connections against the
budget), the checks, and the Markdown report. The standard library only."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# How late a rate-limit sync may run on a busy machine, in the probe's tolerance (fleet_parts.probe;
# scripts/fleet --late-syncs).
LATE_SYNC_SECONDS = 0.4


@dataclass(frozen=True)
class Request:
    start: float  # epoch seconds, when the swarm sent it
    ms: float
    status: int  # 0: no answer
    method: str
    record_id: str  # the id a 201 from POST /jumps named; "" otherwise
    origin: str = ""  # who answered a 5xx: "api" (problem+json) or "balancer" (HAProxy's own page)
    problem: str = ""  # the kind of the API's problem+json 5xx, where it was read ("overloaded")

    @property
    def answer(self) -> str:
        """The answer as the report counts it: the status, "no answer", "<5xx> from HAProxy", or the
        API's "<5xx> <kind>" where its kind was read."""
        if self.status == 0:
            return NO_ANSWER
        if self.status >= 500 and self.origin != "api":
            return f"{self.status} from HAProxy"
        if self.status >= 500 and self.problem:
            return f"{self.status} {self.problem}"
        return str(self.status)

    @property
    def unanswered(self) -> bool:
        """Not served by an instance: no answer at all, or the balancer's own error page."""
        return self.answer == NO_ANSWER or self.answer.endswith("from HAProxy")


NO_ANSWER = "no answer"


def read_records(directory: Path) -> list[Request]:
    """Every request the swarm's workers wrote down (fleet_locustfile.py), oldest first. A line cut
    short by a worker that was stopped mid-write is skipped."""
    found: list[Request] = []
    for path in sorted(directory.glob("requests-*.tsv")):
        for line in path.read_text(errors="replace").splitlines():
            parts = line.split("\t")
            if len(parts) != 6:
                continue
            try:
                found.append(Request(float(parts[0]), float(parts[1]), int(parts[2]), parts[3], parts[4], parts[5]))
            except ValueError:
                continue
    return sorted(found, key=lambda request: request.start)


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """The nearest-rank percentile (the smallest value with at least `fraction` of them at or below)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


@dataclass(frozen=True)
class Sample:
    """The fleet database's connections at one moment."""

    at: float  # epoch seconds
    server: int  # PostgreSQL server connections through PgBouncer
    direct: int  # jotc-migrate's own, straight to PostgreSQL
    clients: int | None  # PgBouncer's client connections for the database (None: not read, e.g. restarting)
    waiting: int | None  # of them, waiting for a server connection


@dataclass
class Phase:
    """One phase of the run: its window (epoch seconds), what was done in it, and the PostgreSQL
    server connections sampled meanwhile."""

    name: str
    start: float
    end: float = 0.0
    did: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)  # of the connections, during the phase

    @property
    def seconds(self) -> float:
        return max(0.0, self.end - self.start)

    @property
    def peak_server(self) -> int:
        return max((sample.server for sample in self.samples), default=0)


@dataclass(frozen=True)
class Figures:
    phase: Phase
    requests: int
    answers: Counter[str]
    p50_ms: float | None
    p99_ms: float | None

    @property
    def rate(self) -> float:
        return self.requests / self.phase.seconds if self.phase.seconds else 0.0


def figures(phase: Phase, records: Iterable[Request]) -> Figures:
    """The phase's figures from the requests sent within its window."""
    mine = [request for request in records if phase.start <= request.start < phase.end]
    answered = [request.ms for request in mine if not request.unanswered]
    return Figures(
        phase,
        len(mine),
        Counter(request.answer for request in mine),
        percentile(answered, 0.50),
        percentile(answered, 0.99),
    )


def answers_text(answers: Counter[str]) -> str:
    return ", ".join(f"{answer}: {count:,}" for answer, count in sorted(answers.items())) or "—"


def milliseconds(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def connections_text(phase: Phase, budget: int) -> str:
    if not phase.samples:
        return "—"
    text = f"{phase.peak_server} / {budget}"
    direct = max(sample.direct for sample in phase.samples)
    if direct:
        text += f" (+{direct} direct: jotc-migrate)"
    return text


def clients_text(phase: Phase) -> str:
    clients = [sample.clients for sample in phase.samples if sample.clients is not None]
    waiting = [sample.waiting for sample in phase.samples if sample.waiting is not None]
    if not clients:
        return "—"
    return f"{max(clients)} ({max(waiting, default=0)})"


def table(rows: Sequence[Figures], budget: int) -> str:
    lines = [
        "| phase | seconds | requests (per s) | answers by status | p50 ms | p99 ms "
        "| PostgreSQL server connections, max / budget | PgBouncer's clients, max (waiting) | what happened |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        phase = row.phase
        lines.append(
            f"| {phase.name} | {phase.seconds:.1f} | {row.requests:,} ({row.rate:.0f}) | {answers_text(row.answers)} "
            f"| {milliseconds(row.p50_ms)} | {milliseconds(row.p99_ms)} | {connections_text(phase, budget)} "
            f"| {clients_text(phase)} "
            f"| {'; '.join(phase.did) or '—'} |"
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class ProbeResult:
    """The rate-limit probe: one client address sending through the balancer past its limit."""

    limit: int
    instances: int
    period: str
    rate: float  # requests a second it was sent at
    answers: Counter[str]  # as Request.answer counts them
    tolerance: float  # the admitted count may reach limit * (1 + tolerance)
    record_ids: tuple[str, ...] = ()  # of its 201s
    tries: int = 1  # probes sent: another follows one during which Redis failed a sync
    failed_syncs: int = 0  # rate-limit syncs Redis failed or timed out during the last one

    @property
    def sent(self) -> int:
        return sum(self.answers.values())

    @property
    def admitted(self) -> int:
        return self.answers["201"]

    @property
    def bound(self) -> int:
        return math.floor(self.limit * (1 + self.tolerance))


# The API shedding one client's burst (its per-client share of upload slots, or a worker's): an
# answer of the API's own bounds, not of the rate limit, given after the limiter admitted the request.
SHED = "503 overloaded"


def probe_check(probe: ProbeResult) -> Check:
    """The limit held across the instances: the limiter admitted at least the limit and at most the
    bound (a request the API shed after admitting it counts, as it used the client's budget); no
    other answer."""
    shed = probe.answers[SHED]
    other = Counter({answer: count for answer, count in probe.answers.items() if answer not in {"201", "429", SHED}})
    held = probe.limit <= probe.admitted + shed <= probe.bound and not other
    held = held and not probe.failed_syncs
    detail = (
        f"one client address, {probe.sent} requests at {probe.rate:.0f}/s through HAProxy within one "
        f"{probe.period}'s window: {probe.admitted} admitted (201), {probe.answers['429']} refused (429)"
        + (f", {shed} shed by the API's own bounds ({SHED})" if shed else "")
        + (f", other answers {answers_text(other)}" if other else "")
        + f"; limit {probe.limit}, admitted (shed included) must be {probe.limit} to {probe.bound} "
        f"(tolerance {probe.tolerance:.1%}); "
        f"each of the {probe.instances} instances alone would have admitted up to {probe.limit}"
        + (f"; probe {probe.tries} (Redis failed a rate-limit sync during each before it)" if probe.tries > 1 else "")
        + (
            f"; Redis failed {probe.failed_syncs} rate-limit syncs during it too, so each instance "
            "counted alone for a while and sharing was not measured (jotc_redis_failures_total)"
            if probe.failed_syncs
            else ""
        )
    )
    return Check("rate limit held across the instances", held, detail)


def refused(row: Figures) -> int:
    """Requests of the phase answered 5xx or not at all."""
    return sum(count for answer, count in row.answers.items() if answer == NO_ANSWER or answer.startswith("5"))


def checks(
    rows: Sequence[Figures],
    *,
    acknowledged: int,
    missing: Sequence[str],
    budget: int,
    probe: ProbeResult,
    faults: Sequence[str],
) -> list[Check]:
    """The run's verdicts: nothing acknowledged lost; no 500; nothing unanswered; no refusal outside
    the phases named in `faults` (where the API's 503 with Retry-After is its answer to a dependency
    lost), the rolling restart included; the connection budget kept; the rate limit held."""
    total: Counter[str] = Counter()
    for row in rows:
        total.update(row.answers)
    total.update(probe.answers)
    unanswered = sum(count for answer, count in total.items() if answer == NO_ANSWER or "HAProxy" in answer)
    outside = {row.phase.name: refused(row) for row in rows if row.phase.name not in faults}
    peak = max((row.phase.peak_server for row in rows), default=0)
    return [
        Check(
            "every acknowledged request has its row",
            acknowledged > 0 and not missing,
            f"{acknowledged:,} ids answered 201 (swarm and probe), {len(missing)} missing from jump_requests"
            + (f": {', '.join(missing[:5])}" if missing else ""),
        ),
        Check("no 500, ever", total["500"] == 0, f"{total['500']} answers 500"),
        Check(
            "nothing unanswered",
            unanswered == 0,
            f"{unanswered} requests with no answer, or HAProxy's own 5xx (no server up, or one that failed it)",
        ),
        Check(
            "nothing refused outside the faults, the rolling restart included",
            bool(outside) and not any(outside.values()),
            "requests answered 5xx or not at all: "
            + ", ".join(f"{count} in {name}" for name, count in outside.items())
            + f" (the API's 503 is expected only in {' and '.join(faults)})",
        ),
        Check(
            "PostgreSQL server connections within the budget",
            0 < peak <= budget,
            f"at most {peak} server connections through PgBouncer (its pools: {budget})",
        ),
        probe_check(probe),
    ]


def report(title: str, context: Sequence[str], rows: Sequence[Figures], budget: int, verdicts: Sequence[Check]) -> str:
    """The Markdown report: what ran, the per-phase table, each check."""
    lines = [f"# {title}", "", *[f"- {line}" for line in context], "", table(rows, budget), "", "## Checks", ""]
    lines += [f"- **{'PASS' if check.ok else 'FAIL'}** {check.name}: {check.detail}" for check in verdicts]
    passed = all(check.ok for check in verdicts)
    lines += ["", "fleet: all checks passed" if passed else "fleet: CHECKS FAILED"]
    return "\n".join(lines) + "\n"
