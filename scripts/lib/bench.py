# /// script
# requires-python = ">=3.11"
# dependencies = ["matplotlib==3.10.9"]
# [tool.uv]
# exclude-newer = "2026-11-28T00:00:00Z"  # freezes matplotlib's own dependencies too
# ///
"""scripts/bench: JOTC's API against a bare ASGI app under identical Granian settings, same run.

Throughput of POST /jumps (durable) and of a bare ASGI app answering fixed JSON, in alternating
wrk runs, their medians and ratio; one-connection latency; the first request after a fresh start;
the solver alone. Each target below is reported MET or MISSED against the median measured
(the one-connection p99 against its worst round).
Writes results/bench-<time>.md and .png. Needs wrk (Debian: apt-get install wrk).
"""
# This file reads the options and runs each mode: what it measures (bench_measure.py, bench_trace.py,
# bench_write.py) and what it reports (bench_report.py, bench_chart.py).

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import tempfile
from pathlib import Path
from types import FrameType

import cpu_budget
import jotc_provision
from bench_chart import draw_chart
from bench_measure import (
    API_CONNECTIONS,
    ROOT,
    Received,
    Sampled,
    Start,
    TraceReceiver,
    alternating,
    both_apis,
    first_request_ms,
    loaded_run,
    receiving_traces,
    round_figures,
    sampled_run,
    serving,
    solver_ms,
    start_api,
    start_bare,
    warm_api,
    wrk,
)
from bench_report import (
    TARGETS,
    against_markdown,
    closing_line,
    context,
    floor_markdown,
    judge,
    profile_command,
    report_markdown,
    series,
    statements_markdown,
    summarise,
    tracing_markdown,
    tracing_said,
)
from bench_trace import describe_trace, one_connection_trace, sampling_daemon
from bench_write import database_trace, statement_forms


def positive(text: str) -> int:
    number = int(text)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text}")
    return number


def ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 1:  # nan fails this too
        raise argparse.ArgumentTypeError(f"a sampling ratio in (0, 1], e.g. 0.1, got {text}")
    return value


def label(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._-]*", text):
        raise argparse.ArgumentTypeError("letters, digits, '.', '_' and '-' only (it ends the file name)")
    return text


def parse_args(argv: list[str]) -> argparse.Namespace:
    targets = "\n".join(f"  {t.what} {t.describe()}" for t in TARGETS)
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description=(__doc__ or "").split("\n", 1)[1].strip()
        + "\nUses a fresh database (dropped afterwards) on the server scripts/test would use.",
        epilog="targets (medians, the p99 its worst round; set in scripts/lib/bench_report.py, TARGETS):\n"
        f"{targets}\n\n"
        "Missed targets are reported, never asserted: the exit status is 0 whether they are met or not,\n"
        "and non-zero only when the bench itself could not run.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--rounds", type=positive, default=3, metavar="N", help="alternating rounds of API and bare app (default 3)"
    )
    parser.add_argument("--seconds", type=positive, default=10, metavar="S", help="seconds per wrk run (default 10)")
    parser.add_argument(
        "--connections",
        type=positive,
        default=64,
        metavar="C",
        help="wrk connections for the throughput runs (default 64)",
    )
    parser.add_argument(
        "--label", type=label, default="", metavar="TEXT", help="appended to the report's file name and title"
    )
    parser.add_argument(
        "--rate-limit",
        metavar="LIMIT",
        help="run the API with this JOTC_RATE_LIMIT (e.g. 100000000/minute) and Redis; default off",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead of the comparison: the API's CPU per request split by what it was spent on (py-spy "
        "sampling every worker under one wrk run of --seconds at --connections); prints a table. With "
        "--against REV: REV's code and the work tree's, profiled in alternating --rounds, side by side",
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="instead of the comparison: one connection posting for --seconds, every request's latency "
        "timed; prints those above 3 ms with when they happened, and any beat they fall on (a periodic "
        "stall, with its period); "
        "then the recorder's statement alone from psycopg for as long, to tell the database's slow "
        "answers from the API's",
    )
    parser.add_argument(
        "--statements",
        action="store_true",
        help="instead of the comparison: the write's candidate forms (prepared or not, binary or text "
        "parameters, pipeline mode, COPY, a batch of one as plain values) from psycopg alone, --seconds "
        "each at 1 and 16 rows a batch; CPU per row of the client and of PostgreSQL",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="instead of the comparison: what Granian itself costs, in alternating --rounds of --seconds: "
        "the bare app, the bare app holding each request for a batch's commit as POST /jumps waits "
        "(a pause, no database), and the API; CPU per request of each server's processes at "
        "--connections, and one connection p50",
    )
    parser.add_argument(
        "--against",
        metavar="REV",
        help="instead of the comparison: the API's code at git revision REV (before) against the work "
        "tree's (after), both served side by side and measured in alternating --rounds of --seconds: "
        "throughput and CPU per request at --connections, one connection p50 and p99, and after/before "
        "ratios. Only services/api/src is taken from REV: same dependencies, same database schema",
    )
    parser.add_argument(
        "--tracing",
        type=ratio,
        metavar="RATIO",
        help="with --against REV (or --profile --against REV): the after side traces, RATIO (0 < RATIO <= 1) "
        "of its requests sampled (parentbased_traceidratio) and exported over OTLP/HTTP to a receiver bench "
        "starts on 127.0.0.1, a process of its own whose CPU is not counted as the API's; the before side "
        "does not trace. On a clean tree, --against HEAD --tracing 0.1 is what tracing at 10 %% costs the "
        "current code. The report says how many exports and spans the receiver got, loudly if none. OTEL_* "
        "in bench's own environment never reach the APIs, with or without this option",
    )
    parser.add_argument(
        "--pooler",
        action="store_true",
        help="instead of the comparison: the work tree's API with DATABASE_URL straight to PostgreSQL "
        "(before) against the same API through a PgBouncer in transaction mode (after: Debian's, "
        "JOTC_DB_POOLER=transaction, as many server connections as the API has client ones), side by "
        "side in alternating --rounds of --seconds, with PgBouncer's own CPU per request",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=ROOT / "results",
        metavar="DIR",
        help="where the report and chart go (default results/, git-ignored)",
    )
    args = parser.parse_args(argv)
    modes = [name for name in ("profile", "trace", "statements", "floor", "against", "pooler") if getattr(args, name)]
    if len(modes) > 1 and modes != ["profile", "against"]:  # a profile of REV beside the work tree's
        parser.error(" and ".join(f"--{name}" for name in modes) + " are separate runs: give one at a time")
    if args.tracing is not None and not args.against:
        parser.error("--tracing traces the after side of --against REV: give --against REV with it")
    return args


def compare(
    args: argparse.Namespace, database_url: str, scratch: Path
) -> tuple[dict[str, list[dict[str, float]]], list[float], dict[str, list[float]]]:
    """The API and the bare app in alternating rounds of throughput, each round closed by the API at
    one connection; then the first request after a start, once a round; then the solver alone."""
    starts: dict[str, Start] = {
        "api": lambda port, log: start_api(port, database_url, scratch, args.rate_limit, log=log),
        "bare": lambda port, log: start_bare(port, log=log),
    }
    runs: dict[str, list[dict[str, float]]] = {"api": [], "bare": [], "api_c1": []}
    with serving(args, scratch, starts) as (servers, ports, lua):
        for round_, name in alternating(args.rounds, ("api", "bare")):
            if name == "api":
                runs[name].append(loaded_run(servers[name].pid, ports[name], args.connections, args.seconds, lua))
            else:
                runs[name].append(wrk(ports[name], args.connections, args.seconds, lua))
            print(f"bench: round {round_ + 1} {name}: {runs[name][-1]['rps']:.0f} req/s", file=sys.stderr)
            if len(runs["api"]) == len(runs["bare"]):  # both sides of the round measured
                runs["api_c1"].append(wrk(ports["api"], 1, args.seconds, lua))
                p50 = runs["api_c1"][-1]["p50_ms"]
                print(f"bench: round {round_ + 1} api one connection: p50 {p50} ms", file=sys.stderr)
    firsts = [first_request_ms(database_url, scratch, args.rate_limit) for _ in range(args.rounds)]
    return runs, firsts, solver_ms()


def against(args: argparse.Namespace, database_url: str, scratch: Path) -> str:
    """Before (``--against``'s revision) and after (the work tree), served side by side on one
    database and measured in alternating rounds, so both see the same machine."""
    runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    with receiving_traces(args.tracing, scratch) as traces:
        with both_apis(args, database_url, scratch, traces) as (apis, ports, lua):
            for round_, name in alternating(args.rounds):
                runs[name].append(round_figures(apis[name], ports[name], args, lua))
                print(f"bench: round {round_ + 1} {name}: {runs[name][-1]['rps']:.0f} req/s", file=sys.stderr)
        received = exported(traces)
    return against_markdown(args, runs, received=received)


def exported(traces: TraceReceiver | None) -> Received | None:
    """What --tracing's receiver got, read once the APIs have stopped; said on stderr, where a run
    that exported nothing (tracing silently off) is the last thing one reads before the report."""
    if traces is None:
        return None
    received = traces.received()
    loud = "WARNING: " if received.empty else ""
    print(f"bench: {loud}{tracing_said(traces.ratio, received)}", file=sys.stderr)
    return received


def through_pooler(args: argparse.Namespace, database_url: str, scratch: Path) -> str:
    """The API straight to PostgreSQL (before) and through PgBouncer in transaction mode (after),
    both the work tree's code on one database, in alternating rounds; PgBouncer's CPU per request
    beside the API's and PostgreSQL's."""
    # As many server connections as the API may open: the pooler adds a hop, not a queue.
    with jotc_provision.pgbouncer(scratch / "pgbouncer", database_url, pool_size=API_CONNECTIONS) as bouncer:
        pooled = bouncer.url(database_url)
        starts: dict[str, Start] = {
            "before": lambda port, log: start_api(port, database_url, scratch, args.rate_limit, log=log),
            "after": lambda port, log: start_api(
                port, pooled, scratch, args.rate_limit, log=log, extra={"JOTC_DB_POOLER": "transaction"}
            ),
        }
        assert bouncer.process is not None
        runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
        with serving(args, scratch, starts) as (apis, ports, lua):
            for round_, name in alternating(args.rounds):
                figures = round_figures(apis[name], ports[name], args, lua, pooler=bouncer.process.pid)
                runs[name].append(figures)
                print(f"bench: round {round_ + 1} {name}: {figures['rps']:.0f} req/s", file=sys.stderr)
    return against_markdown(args, runs, sides=("straight to PostgreSQL", "through PgBouncer, transaction mode"))


def profile(args: argparse.Namespace, database_url: str, scratch: Path) -> str:
    """The CPU budget table of cpu_budget.py, from one loaded run of the API."""
    with warm_api(args, database_url, scratch) as (api, port, lua):
        seen = sampled_run(api, port, lua, args, scratch)
    table = cpu_budget.markdown(seen.budget(), profile_command(args))
    return f"{table}\n\n{seen.rps:.0f} req/s while sampled; {sum(seen.samples.values())} samples."


def profile_against(args: argparse.Namespace, database_url: str, scratch: Path) -> str:
    """The CPU budget of ``--against``'s revision and of the work tree, each summed over
    alternating sampled runs, side by side: the profile that explains a before/after difference."""
    seen: dict[str, Sampled] = {}
    with receiving_traces(args.tracing, scratch) as traces:
        with both_apis(args, database_url, scratch, traces) as (apis, ports, lua):
            for round_, name in alternating(args.rounds):
                run = sampled_run(apis[name], ports[name], lua, args, scratch)
                seen[name] = seen[name].plus(run) if name in seen else run
                print(f"bench: round {round_ + 1} {name}: {run.rps:.0f} req/s while sampled", file=sys.stderr)
        received = exported(traces)
    table = cpu_budget.compare_markdown(seen["before"].budget(), seen["after"].budget(), profile_command(args))
    rates = ", ".join(f"{name} {seen[name].rps:.0f} req/s" for name in ("before", "after"))
    traced = f"{tracing_markdown(args.tracing, received)}\n\n" if received is not None else ""
    return f"{traced}{table}\n\nThroughput while sampled: {rates}."


def floor(args: argparse.Namespace, database_url: str, scratch: Path) -> str:
    """Granian's own cost per request, for a request answered at once and for one that waits as
    POST /jumps waits, beside the API's, in alternating rounds: the part of the API's CPU no code
    of this service can remove."""
    starts: dict[str, Start] = {
        "bare": lambda port, log: start_bare(port, log=log),
        "waiting": lambda port, log: start_bare(port, "bare_app:waiting", log),
        "api": lambda port, log: start_api(port, database_url, scratch, args.rate_limit, log=log),
    }
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in starts}
    with serving(args, scratch, starts) as (servers, ports, lua):
        for round_, name in alternating(args.rounds, tuple(starts)):
            runs[name].append(round_figures(servers[name], ports[name], args, lua))
            print(f"bench: round {round_ + 1} {name}: {runs[name][-1]['rps']:.0f} req/s", file=sys.stderr)
    return floor_markdown(args, runs)


def trace_run(args: argparse.Namespace, database_url: str, scratch: Path) -> str:
    """The API's trace, then the database's alone for as long: a slow answer the database alone
    shows as often is not the API's to remove."""
    with warm_api(args, database_url, scratch) as (_, port, _):
        through_api = describe_trace(one_connection_trace(port, args.seconds))
    alone = describe_trace(database_trace(database_url, args.seconds))
    report = f"Through the API:\n{through_api}\n\nThe recorder's statement alone (psycopg, no API):\n{alone}"
    daemon = sampling_daemon()
    return report + (f"\n\nOn this machine: {daemon}." if daemon else "")


def write_comparison(
    args: argparse.Namespace,
    ctx: dict[str, str],
    runs: dict[str, list[dict[str, float]]],
    firsts: list[float],
    solver: dict[str, list[float]],
) -> None:
    """The comparison's report and chart into --results, its verdicts on the terminal."""
    values = series(runs, firsts, solver)
    summary = summarise(values)
    verdicts = judge(summary)
    args.results.mkdir(parents=True, exist_ok=True)
    base = args.results / f"bench-{ctx['stamp']}{'-' + args.label if args.label else ''}"
    markdown = report_markdown(args, ctx, runs, firsts, solver, summary, verdicts)
    base.with_suffix(".md").write_text(markdown)
    draw_chart(base.with_suffix(".png"), args, ctx, values, solver, summary, verdicts)
    print(markdown)
    print(f"bench: report {base.with_suffix('.md')}, chart {base.with_suffix('.png')}")
    for verdict in verdicts:
        print(f"bench: {verdict.line()}")
    print(f"bench: {closing_line(verdicts)} (reported, not asserted: the exit status is 0 either way)")


def write_against(args: argparse.Namespace, ctx: dict[str, str], report: str) -> None:
    """--against's or --pooler's report into --results, and on the terminal."""
    args.results.mkdir(parents=True, exist_ok=True)
    mode = "pooler" if args.pooler else "against"
    written = args.results / f"bench-{ctx['stamp']}-{mode}{'-' + args.label if args.label else ''}.md"
    written.write_text(f"# scripts/bench --{mode}\n\n{ctx['date']}, {ctx['commit']}, {ctx['machine']}\n\n{report}\n")
    print(report)
    print(f"bench: report {written}")


def _terminated(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop servers and remove files


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    database_url = os.environ.get("DATABASE_URL")
    if not database_url:
        raise SystemExit("bench: DATABASE_URL (a migrated database of its own) is needed: run it as scripts/bench")
    signal.signal(signal.SIGTERM, _terminated)
    if inherited := sorted(name for name in os.environ if name.startswith("OTEL_")):
        ignored = ", ".join(inherited)
        print(f"bench: not passed to the APIs: {ignored} (--tracing traces --against's after side)", file=sys.stderr)
    ctx = context(argv)
    with tempfile.TemporaryDirectory(prefix="jotc-bench-") as directory:
        scratch = Path(directory)
        if args.trace:
            print(trace_run(args, database_url, scratch))
        elif args.profile:
            print((profile_against if args.against else profile)(args, database_url, scratch))
        elif args.floor:
            print(floor(args, database_url, scratch))
        elif args.statements:
            print(statements_markdown(args.seconds, statement_forms(database_url, args.seconds)))
        elif args.against:
            write_against(args, ctx, against(args, database_url, scratch))
        elif args.pooler:
            write_against(args, ctx, through_pooler(args, database_url, scratch))
        else:
            write_comparison(args, ctx, *compare(args, database_url, scratch))


if __name__ == "__main__":
    main(sys.argv[1:])
