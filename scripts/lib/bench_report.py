"""What scripts/bench says: the targets and their verdicts, the medians they are judged on, where and
how a run was made, and each mode's markdown. Change a target in TARGETS, nowhere else.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import statistics
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench_measure import BACKPRESSURE, SOLVER_CASES, SOLVER_REPEATS, WORKERS, Received, git


@dataclass(frozen=True)
class Target:
    key: str  # the measure in summarise()'s result, and the per-round series in series()
    what: str
    op: str  # ">=" or "<="
    limit: float
    unit: str
    rounds_key: str = ""  # the per-round series, where it is not named ``key``

    @property
    def rounds(self) -> str:
        return self.rounds_key or self.key

    def met(self, value: float) -> bool:
        return value >= self.limit if self.op == ">=" else value <= self.limit

    def describe(self) -> str:
        return f"{'≥' if self.op == '>=' else '≤'} {format_value(self.limit, self.unit)}"


# The targets, each checked against the median of its measure (the p99's, against its worst round:
# a tail that holds only in most rounds does not hold). Change a target here, nowhere else.
TARGETS: tuple[Target, ...] = (
    Target("ratio", "POST /jumps durable vs bare ASGI app (req/s ratio)", ">=", 0.30, ""),
    Target("c1_p50_ms", "one connection p50", "<=", 1.5, "ms"),
    Target("c1_p99_worst_ms", "one connection p99, worst round", "<=", 3.0, "ms", "c1_p99_ms"),
    Target("first_request_ms", "first request after start", "<=", 35.0, "ms"),
    Target("solver_ms", f"solver alone, {SOLVER_CASES[0][0]}", "<=", 50.0, "ms"),
)


@dataclass(frozen=True)
class Verdict:
    target: Target
    value: float

    @property
    def met(self) -> bool:
        return self.target.met(self.value)

    def line(self) -> str:
        word = "MET" if self.met else "MISSED"
        measured = format_value(self.value, self.target.unit)
        return f"{word:<6}  {self.target.what}: {measured} (target {self.target.describe()})"


def format_value(value: float, unit: str) -> str:
    if not unit:
        return f"{value:.3f}"
    return f"{value:.2f} {unit}" if value < 10 else f"{value:.1f} {unit}"


def judge(summary: dict[str, float], targets: tuple[Target, ...] = TARGETS) -> list[Verdict]:
    return [Verdict(target, summary[target.key]) for target in targets]


def closing_line(verdicts: list[Verdict]) -> str:
    missed = [v.target.what for v in verdicts if not v.met]
    tally = f"{len(missed)} of {len(verdicts)} targets missed"
    return f"{tally}: {'; '.join(missed)}" if missed else f"{tally}: all met"


def series(
    runs: dict[str, list[dict[str, float]]], firsts: list[float], solver: dict[str, list[float]]
) -> dict[str, list[float]]:
    """Every round's value of every measure (the solver: every repeat of the targeted case)."""
    return {
        "api_rps": [run["rps"] for run in runs["api"]],
        "bare_rps": [run["rps"] for run in runs["bare"]],
        "ratio": [a["rps"] / b["rps"] for a, b in zip(runs["api"], runs["bare"], strict=True)],
        "c1_p50_ms": [run["p50_ms"] for run in runs["api_c1"]],
        "c1_p99_ms": [run["p99_ms"] for run in runs["api_c1"]],
        "first_request_ms": list(firsts),
        "solver_ms": list(solver[SOLVER_CASES[0][0]]),
        # CPU per request in the throughput runs: the API's processes (main and workers), and PostgreSQL's.
        **{
            key: [run[key] for run in runs["api"]]
            for key in ("api_cpu_us", "pg_cpu_us")
            if runs["api"] and key in runs["api"][0]
        },
    }


def summarise(values: dict[str, list[float]]) -> dict[str, float]:
    """Medians; the ratio is that of the median throughputs, as the documented figures are; and the
    one-connection p99 of the worst round."""
    summary = {key: statistics.median(points) for key, points in values.items()}
    summary["ratio"] = summary["api_rps"] / summary["bare_rps"]
    summary["c1_p99_worst_ms"] = max(values["c1_p99_ms"])
    return summary


def context(argv: list[str]) -> dict[str, str]:
    """Where and how this run was made: date, commit (+dirty: tracked files differ from it), machine, command."""
    commit = git("rev-parse", "--short", "HEAD").stdout.strip() or "unknown"
    if commit != "unknown" and git("diff", "--quiet", "HEAD", "--").returncode != 0:
        commit += "+dirty"
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    except OSError:
        model = None
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    now = datetime.now(UTC)
    return {
        "date": now.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "stamp": now.strftime("%Y%m%dT%H%M%SZ"),
        "commit": commit,
        "machine": f"nproc {nproc}, {model[1].strip() if model else 'CPU model unknown'}",
        "command": shlex.join(["scripts/bench", *argv]),
    }


def report_markdown(
    args: argparse.Namespace,
    ctx: dict[str, str],
    runs: dict[str, list[dict[str, float]]],
    firsts: list[float],
    solver: dict[str, list[float]],
    summary: dict[str, float],
    verdicts: list[Verdict],
) -> str:
    values = series(runs, firsts, solver)
    non_2xx = sum(run["non_2xx"] for run in runs["api"] + runs["api_c1"])
    lines = [
        f"# JOTC bench {ctx['date']} {args.label}".rstrip(),
        "",
        f"- Date: {ctx['date']}",
        f"- Commit: {ctx['commit']}",
        f"- Machine: {ctx['machine']}",
        f"- Command: `{ctx['command']}`",
        f"- Settings: Granian {WORKERS} workers, uvloop, backpressure {BACKPRESSURE}, both servers; wrk POST /jumps, "
        f"{args.connections} connections, {args.seconds} s per run, {args.rounds} alternating rounds; medians. "
        f"Rate limiting: {args.rate_limit + ' (Redis)' if args.rate_limit else 'off'}.",
        "",
        "## Targets",
        "",
        "Checked against the median (the one-connection p99 against its worst round); reported, never asserted "
        "(the exit status does not depend on them).",
        "",
        "| target | measured (median; p99: worst round) | every round | verdict |",
        "|---|---|---|---|",
        *(
            f"| {v.target.what} {v.target.describe()} | {format_value(v.value, v.target.unit)} | "
            f"{', '.join(format_value(x, v.target.unit) for x in values[v.target.rounds])} | "
            f"{'MET' if v.met else '**MISSED**'} |"
            for v in verdicts
        ),
        "",
        f"**{closing_line(verdicts)}.**",
        "",
        "## Measures",
        "",
        "| measure | median |",
        "|---|---|",
        f"| POST /jumps, durable (req/s) | {summary['api_rps']:.0f} |",
        f"| bare ASGI app, fixed JSON (req/s) | {summary['bare_rps']:.0f} |",
        f"| ratio | {summary['ratio']:.3f} |",
        f"| one connection p50 / p99 (ms) | {summary['c1_p50_ms']:.2f} / {summary['c1_p99_ms']:.2f} |",
        f"| first request after start (ms, slowest of each worker's first) | {summary['first_request_ms']:.1f} |",
        f"| non-2xx answers from the API during the runs | {non_2xx:.0f} |",
        *(
            [
                f"| CPU per request, the API's processes (µs) | {summary['api_cpu_us']:.0f} |",
                f"| CPU per request, PostgreSQL's processes (µs) | {summary['pg_cpu_us']:.0f} |",
            ]
            if "api_cpu_us" in summary
            else []
        ),
        "",
        f"Solver alone ({SOLVER_REPEATS} runs each):",
        "",
        "| input | median ms | min to max ms |",
        "|---|---|---|",
        *(f"| {case} | {statistics.median(ms):.1f} | {min(ms):.1f} to {max(ms):.1f} |" for case, ms in solver.items()),
        "",
        "Every round:",
        "",
        "| round | API req/s | bare req/s | ratio | API c1 p50 ms | API c1 p99 ms | first request ms |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {i + 1} | {a['rps']:.0f} | {b['rps']:.0f} | {a['rps'] / b['rps']:.3f} | {c['p50_ms']:.2f} | "
            f"{c['p99_ms']:.2f} | {f:.1f} |"
            for i, (a, b, c, f) in enumerate(zip(runs["api"], runs["bare"], runs["api_c1"], firsts, strict=True))
        ),
    ]
    return "\n".join(lines) + "\n"


def profile_command(args: argparse.Namespace) -> str:
    ran = f"scripts/bench --profile --seconds {args.seconds} --connections {args.connections}"
    if args.against:
        ran += f" --against {args.against} --rounds {args.rounds}{tracing_option(args)}"
    return ran + (f" --rate-limit {args.rate_limit}" if args.rate_limit else "")


def tracing_option(args: argparse.Namespace) -> str:
    return f" --tracing {args.tracing:g}" if args.tracing is not None else ""


def percent(ratio: float) -> str:
    return f"{ratio * 100:g} %"


def tracing_said(ratio: float, received: Received) -> str:
    """What --tracing's after side exported; a run where the receiver got nothing did not measure
    tracing (the after side did not trace), and says so first."""
    got = (
        f"the receiver got {received.exports} OTLP/HTTP export requests, {received.spans} spans, "
        f"{received.bytes} bytes"
        + (f", and refused {received.refused} requests it could not read" if received.refused else "")
    )
    if received.empty:
        return (
            f"NOTHING WAS EXPORTED: the after side was to trace at {percent(ratio)} sampling, but {got}. "
            "It did not trace: these figures are not tracing's cost."
        )
    return (
        f"After side traced: OTEL_TRACES_SAMPLER=parentbased_traceidratio at {percent(ratio)}, exported "
        f"over OTLP/HTTP to a receiver on this machine (a process of its own, not counted as the API's "
        f"CPU); {got} (warm-up included). Before side: no OTEL_* at all."
    )


def tracing_markdown(ratio: float, received: Received) -> str:
    said = tracing_said(ratio, received)
    return f"**{said}**" if received.empty else said


FLOOR_SERVERS = (
    ("bare", "bare ASGI app, answering at once"),
    ("waiting", "bare ASGI app, each request held for a batch's commit (a pause, no database)"),
    ("api", "POST /jumps, durable"),
)


def floor_markdown(args: argparse.Namespace, runs: dict[str, list[dict[str, float]]]) -> str:
    ran = f"scripts/bench --floor --rounds {args.rounds} --seconds {args.seconds} --connections {args.connections}"
    lines = [
        f"What the server costs, medians of {args.rounds} alternating rounds (`{ran}`):",
        "",
        f"| server | req/s at {args.connections} connections | CPU per request, its processes (µs) "
        "| one connection p50 (ms) |",
        "|---|---:|---:|---:|",
    ]
    for name, what in FLOOR_SERVERS:
        rounds = runs[name]
        rps, cpu, p50 = (statistics.median(r[key] for r in rounds) for key in ("rps", "api_cpu_us", "c1_p50_ms"))
        lines.append(f"| {what} | {rps:.0f} | {cpu:.0f} | {p50:.2f} |")
    refused = {name: sum(r.get("non_2xx", 0) for r in rounds) for name, rounds in runs.items()}
    if any(refused.values()):
        counts = ", ".join(f"{name} {count:.0f}" for name, count in refused.items() if count)
        lines += ["", f"**Not every answer was a 2xx ({counts}): these figures are not the servers' cost.**"]
    return "\n".join(lines)


AGAINST_MEASURES = (
    ("rps", "POST /jumps, durable (req/s)", "{:.0f}"),
    ("api_cpu_us", "CPU per request, the API's processes (µs)", "{:.0f}"),
    ("pg_cpu_us", "CPU per request, PostgreSQL's processes (µs)", "{:.0f}"),
    ("c1_p50_ms", "one connection p50 (ms)", "{:.2f}"),
    ("c1_p99_ms", "one connection p99 (ms)", "{:.2f}"),
)


POOLER_MEASURE = ("pooler_cpu_us", "CPU per request, PgBouncer's process (µs)", "{:.0f}")


def against_markdown(
    args: argparse.Namespace,
    runs: dict[str, list[dict[str, float]]],
    sides: tuple[str, str] | None = None,
    received: Received | None = None,
) -> str:
    """The after/before table of two sides measured in alternating rounds: --against's revision and
    the work tree (tracing, with --tracing: what its receiver ``received`` is said first), or the
    ``sides`` named (--pooler: direct and through PgBouncer)."""
    measures = AGAINST_MEASURES + ((POOLER_MEASURE,) if "pooler_cpu_us" in runs["after"][0] else ())
    median = {
        name: {key: statistics.median(r.get(key, 0.0) for r in rounds) for key, _, _ in measures}
        for name, rounds in runs.items()
    }
    mode = f"--against {args.against}{tracing_option(args)}" if sides is None else "--pooler"
    ran = f"scripts/bench {mode} --rounds {args.rounds} --seconds {args.seconds}"
    traced = f", tracing at {percent(args.tracing)} sampling" if sides is None and args.tracing is not None else ""
    named_before, named_after = sides or (args.against, f"the work tree{traced}")
    lines = [
        *([tracing_markdown(args.tracing, received), ""] if received is not None else []),
        f"Before ({named_before}) and after ({named_after}), medians of {args.rounds} alternating rounds (`{ran}`):",
        "",
        "| measure | before | after | after / before |",
        "|---|---:|---:|---:|",
    ]
    for key, what, fmt in measures:
        before, after = median["before"][key], median["after"][key]
        ratio = f"{after / before:.3f}" if before else "-"
        lines.append(f"| {what} | {fmt.format(before)} | {fmt.format(after)} | {ratio} |")
    refused = sum(r["non_2xx"] for rounds in runs.values() for r in rounds)
    lines += [
        "",
        f"Non-2xx answers during the runs: {refused:.0f}.",
        "",
        "| round | " + " | ".join(f"{name} req/s | {name} API µs" for name in runs) + " |",
        "|---|" + "---:|" * (2 * len(runs)),
    ]
    for index in range(args.rounds):
        cells = [fmt.format(runs[name][index][key]) for name in runs for key, _, fmt in AGAINST_MEASURES[:2]]
        lines.append(f"| {index + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def statements_markdown(seconds: float, forms: list[tuple[str, int, float, float, float]]) -> str:
    """The write's candidate forms side by side, as a table."""
    lines = [
        f"The write's forms from psycopg, one connection, {seconds:g} s each (`scripts/bench --statements`):",
        "",
        "| form | rows a batch | client CPU µs/row | PostgreSQL CPU µs/row | batch wall µs (median) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, rows, client, server, wall in forms:
        lines.append(f"| {name} | {rows} | {client:.0f} | {server:.0f} | {wall:.0f} |")
    return "\n".join(lines)
