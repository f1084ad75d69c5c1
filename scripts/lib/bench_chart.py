"""scripts/bench's chart: every round of the comparison as a point, its median as a bar, each target
as a dashed line, the verdicts in the titles. matplotlib is in bench.py's inline metadata only, so it
is imported where the chart is drawn.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from bench_measure import SOLVER_CASES, SOLVER_REPEATS, WORKERS
from bench_report import Verdict, closing_line, format_value


def draw_chart(
    path: Path,
    args: argparse.Namespace,
    ctx: dict[str, str],
    values: dict[str, list[float]],
    solver: dict[str, list[float]],
    summary: dict[str, float],
    verdicts: list[Verdict],
) -> None:
    """Every round as a point, its median as a bar, each target as a dashed line, verdicts in the titles."""
    import matplotlib  # type: ignore[import-not-found,unused-ignore]  # only in the bench's own environment

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found,unused-ignore]

    met_colour, missed_colour = "#2f855a", "#c53030"
    by_key = {v.target.rounds: v for v in verdicts}

    def strip(axes: Any, x: float, points: list[float], colour: str, bar: float | None = None) -> None:
        """The points, and a bar at the value judged (the median unless ``bar`` says otherwise)."""
        axes.vlines(x, min(points), max(points), color=colour, linewidth=1)
        axes.scatter([x] * len(points), points, color=colour, s=18, zorder=3)
        axes.hlines(statistics.median(points) if bar is None else bar, x - 0.25, x + 0.25, color=colour, linewidth=2.5)

    def target_line(axes: Any, key: str, x_from: float = -0.4, x_to: float = 0.4, name: str = "target") -> str:
        verdict = by_key[key]
        word = "MET" if verdict.met else "MISSED"
        axes.hlines(
            verdict.target.limit,
            x_from,
            x_to,
            color=met_colour if verdict.met else missed_colour,
            linestyle="--",
            linewidth=1.5,
            label=f"{name} {verdict.target.describe()}: {word}",
        )
        axes.legend(loc="best", fontsize=8)
        return word

    figure, grid = plt.subplots(2, 3, figsize=(15, 8.5))
    (throughput, ratio, latency), (first, solver_axes, verdict_axes) = grid

    strip(throughput, 0, values["api_rps"], "#2b6cb0")
    strip(throughput, 1, values["bare_rps"], "#718096")
    throughput.set_xticks([0, 1], ["POST /jumps\n(durable)", "bare ASGI app"])
    throughput.set_xlim(-0.6, 1.6)
    throughput.set_ylim(bottom=0)
    throughput.set_ylabel("requests / s")
    throughput.set_title(f"Throughput, {args.connections} connections")

    strip(ratio, 0, values["ratio"], "#2b6cb0", bar=summary["ratio"])
    ratio.set_xticks([0], ["durable / bare"])
    ratio.set_xlim(-0.6, 0.6)
    ratio.set_ylim(0, max([*values["ratio"], by_key["ratio"].target.limit]) * 1.3)
    word = target_line(ratio, "ratio")
    ratio.set_title(f"Ratio {summary['ratio']:.3f}: {word}")

    strip(latency, 0, values["c1_p50_ms"], "#2f855a")
    strip(latency, 1, values["c1_p99_ms"], "#c05621", bar=summary["c1_p99_worst_ms"])
    latency.set_xticks([0, 1], ["p50", "p99"])
    latency.set_xlim(-0.6, 1.6)
    latency.set_ylim(0, max([*values["c1_p99_ms"], by_key["c1_p99_ms"].target.limit]) * 1.25)
    p50_word = target_line(latency, "c1_p50_ms", name="p50 target")
    p99_word = target_line(latency, "c1_p99_ms", 0.6, 1.4, name="p99 target")
    latency.set_ylabel("ms")
    latency.set_title(f"One connection: p50 {p50_word}, p99 {p99_word}")

    strip(first, 0, values["first_request_ms"], "#6b46c1")
    first.set_xticks([0], ["first request"])
    first.set_xlim(-0.6, 0.6)
    first.set_ylim(0, max([*values["first_request_ms"], by_key["first_request_ms"].target.limit]) * 1.25)
    first.set_ylabel("ms")
    first.set_title(f"First request after start: {target_line(first, 'first_request_ms')}")

    for x, times in enumerate(solver.values()):
        strip(solver_axes, x, times, "#2b6cb0" if x == 0 else "#718096")
    solver_axes.set_yscale("log")
    solver_axes.set_xticks(range(len(SOLVER_CASES)), [f"{k} · {p:.0%}" for _, k, p in SOLVER_CASES])
    solver_axes.set_xlabel("max_jump · thunderheads")
    solver_axes.set_xlim(-0.6, len(solver) - 0.4)
    solver_axes.set_ylabel("ms (log)")
    _, k, share = SOLVER_CASES[0]
    word = target_line(solver_axes, "solver_ms", name=f"{k} · {share:.0%} target")
    solver_axes.set_title(f"Solver, n = 1,000,000, {SOLVER_REPEATS} runs each: {word}")

    verdict_axes.axis("off")
    verdict_axes.set_title("Targets (medians; p99: worst round)")
    for row, verdict in enumerate(verdicts):
        verdict_axes.text(
            0,
            0.92 - row * 0.14,
            f"{'MET' if verdict.met else 'MISSED'}",
            fontweight="bold",
            color=met_colour if verdict.met else missed_colour,
            transform=verdict_axes.transAxes,
        )
        verdict_axes.text(
            0.2,
            0.92 - row * 0.14,
            f"{verdict.target.what}\n{format_value(verdict.value, verdict.target.unit)} "
            f"(target {verdict.target.describe()})",
            fontsize=8,
            va="center",
            transform=verdict_axes.transAxes,
        )
    verdict_axes.text(
        0,
        0.92 - len(verdicts) * 0.14,
        closing_line(verdicts).split(":")[0],
        fontweight="bold",
        transform=verdict_axes.transAxes,
    )

    figure.suptitle(
        f"JOTC bench {ctx['date']} · commit {ctx['commit']}{' · ' + args.label if args.label else ''}", fontsize=13
    )
    rounds = f"{args.rounds} round{'s' if args.rounds > 1 else ''} of {args.seconds} s"
    figure.text(
        0.01,
        0.01,
        f"{ctx['command']}  ·  {rounds} (points: each round; solid: median, the p99's worst round; dashed: target)"
        f"  ·  {ctx['machine']}  ·  Granian {WORKERS} workers",
        fontsize=8,
        color="#4a5568",
    )
    figure.tight_layout(rect=(0, 0.03, 1, 0.96))
    figure.savefig(path, dpi=100)
    plt.close(figure)
