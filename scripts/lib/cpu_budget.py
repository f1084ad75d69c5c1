"""The API's CPU per request, split by what it was spent on: `scripts/bench --profile`.

While wrk loads POST /jumps, py-spy (locked in services/api's dev group) samples every Granian
worker, and /proc says how much CPU each of the worker's threads used. The Python thread's CPU
is shared out over the categories below in proportion to py-spy's samples; the other threads
(Granian's Rust runtime: sockets, HTTP parsing, the hand-over to Python) are one line of their
own. Each line is microseconds of CPU per request answered. The bench's small inputs are solved on
the event loop; a large one goes to a worker thread, whose CPU would count on the other threads'
line while py-spy's samples of it are shared out of the main thread's.

A sample is put in the first category that one of its frames belongs to, from the innermost
frame out: time in psycopg called by the recorder is the recorder's, time in a standard-library
module is its caller's. Samples where no frame of the application or its libraries appears are
the event loop's (asyncio and uvloop scheduling callbacks) or Granian's ASGI glue.
"""

from __future__ import annotations

import re
from collections import Counter

# (category, path fragments of the frames that belong to it), most specific first.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("solving", ("jotc_api/solver.py",)),
    ("parsing and validating the body", ("jotc_api/parsing.py", "jotc_api/problems.py")),
    ("recorder, SQLAlchemy and psycopg", ("jotc_api/recorder.py", "/psycopg/", "/psycopg_pool/", "/sqlalchemy/")),
    ("idempotency, rate limit, Redis", ("jotc_api/idempotency.py", "jotc_api/ratelimit.py", "/redis/")),
    ("metrics", ("jotc_api/metrics.py", "/prometheus_client/")),
    ("logging", ("jotc_api/logs.py", "/structlog/", "/logging/")),
    ("the route, pipeline and transport (jotc_api)", ("jotc_api/",)),
    ("Litestar", ("/litestar/",)),
    ("Granian's ASGI glue", ("/granian/",)),
)
EVENT_LOOP = "event loop (asyncio, uvloop)"
RUST_THREADS = "Granian's Rust threads (sockets, HTTP, hand-over)"
# py-spy sees Python frames only: time in Granian's native receive() and send() shows on the line
# of ours that awaits them. These functions do little else.
SERVER_CALLS = "Granian's receive() and send(), native, from our awaiting line"
AWAITING_SERVER = frozenset({"read_body", "send_through", "send_answer"})
FRAME = re.compile(r"^(?P<function>.*) \((?P<path>[^()]*):\d+\)$")


def category(stack: list[str]) -> str:
    """The category of one sample, its frames outermost first."""
    frames = list(reversed(stack))
    leaf = FRAME.match(frames[0]) if frames else None
    if leaf and "jotc_api/" in leaf["path"] and leaf["function"].rsplit(".", 1)[-1] in AWAITING_SERVER:
        return SERVER_CALLS
    # py-spy names files below site-packages relative to it (granian/server/mp.py): a leading slash
    # makes every fragment match at a directory boundary.
    paths = ["/" + match["path"].lstrip("/") if (match := FRAME.match(frame)) else frame for frame in frames]
    for path in paths:
        for name, fragments in CATEGORIES:
            if any(fragment in path for fragment in fragments):
                return name
    return EVENT_LOOP


def samples(raw: str) -> Counter[str]:
    """py-spy's raw output (one line per distinct stack: frames joined by ';', then a count) as
    samples per category."""
    found: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            found[category(stack.split(";"))] += int(count)
    return found


def budget(
    sampled: Counter[str], python_cpu: float, other_cpu: float, requests: float
) -> list[tuple[str, float, float]]:
    """(category, share of the worker's CPU, µs per request), largest first, then the total."""
    total_samples = sum(sampled.values())
    whole = python_cpu + other_cpu
    rows = []
    for name, count in sampled.items():
        seconds = python_cpu * count / total_samples if total_samples else 0.0
        rows.append((name, seconds))
    rows.append((RUST_THREADS, other_cpu))
    rows.sort(key=lambda row: -row[1])
    table = [(name, seconds / whole if whole else 0.0, seconds / requests * 1e6) for name, seconds in rows]
    return [*table, ("total", 1.0, whole / requests * 1e6)]


def markdown(rows: list[tuple[str, float, float]], command: str) -> str:
    lines = [
        f"API CPU per request, by what it was spent on (`{command}`):",
        "",
        "| spent on | share | µs per request |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {share:.0%} | {micros:.0f} |" for name, share, micros in rows]
    return "\n".join(lines)


def compare_markdown(
    before: list[tuple[str, float, float]], after: list[tuple[str, float, float]], command: str
) -> str:
    """Two budgets side by side, in µs per request: each category's before, after and difference,
    the largest cut first and the largest increase last, then the total."""
    was = {name: micros for name, _, micros in before}
    now = {name: micros for name, _, micros in after}
    names = sorted((set(was) | set(now)) - {"total"}, key=lambda name: now.get(name, 0.0) - was.get(name, 0.0))
    lines = [
        f"API CPU per request, before and after, by what it was spent on (`{command}`; µs per request):",
        "",
        "| spent on | before | after | after - before |",
        "|---|---:|---:|---:|",
    ]
    for name in [*names, "total"]:
        old_us, new_us = round(was.get(name, 0.0)), round(now.get(name, 0.0))
        lines.append(f"| {name} | {old_us} | {new_us} | {new_us - old_us:+d} |")
    return "\n".join(lines)
