"""scripts/bench --trace's analysis: every POST /jumps of one keep-alive connection timed, the answers
above TRACE_LIMIT_MS listed, and any beat they fall on (a periodic stall, with its period), which
names Linux's memory sampling daemon when it runs on the machine.
"""

from __future__ import annotations

import gc
import math
import re
import socket
import time
from pathlib import Path

from bench_measure import BODY

TRACE_LIMIT_MS = 3.0


def one_connection_trace(port: int, seconds: float) -> list[tuple[float, float]]:
    """(seconds since the start, latency in ms) of every POST /jumps one keep-alive connection
    makes, one after another, for ``seconds``. A raw socket and no garbage collection on this
    side, so what is timed is the server's."""
    body = BODY.encode()
    request = (
        b"POST /jumps HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    trace: list[tuple[float, float]] = []
    collecting = gc.isenabled()
    gc.disable()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def more() -> bytes:
                received = connection.recv(65536)
                if not received:
                    raise SystemExit("bench: the server closed the trace's connection")
                return received

            began = time.perf_counter()
            while (sent := time.perf_counter()) - began < seconds:
                connection.sendall(request)
                answer = b""
                while b"\r\n\r\n" not in answer:
                    answer += more()
                head, _, rest = answer.partition(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length: *(\d+)", head)[1])  # type: ignore[index]
                while len(rest) < length:
                    rest += more()
                if not head.startswith(b"HTTP/1.1 201"):
                    raise SystemExit(f"bench: the trace got {head.splitlines()[0]!r}")
                trace.append((sent - began, (time.perf_counter() - sent) * 1000))
    finally:
        if collecting:
            gc.enable()
    return trace


BEAT_WINDOW_S = 0.010  # a slow answer is on a beat when within ±10 ms of it
BEAT_PERIODS_S = [p / 2000 for p in range(200, 4001)]  # 100 ms to 2 s, every 0.5 ms
BEAT_Z = 4.0  # how far above chance a beat's count must be, in standard deviations
BEAT_MIN = 10  # answers on a beat, and a third of those looked at: fewer is chance on some period


def on_beat(times: list[float], period: float) -> list[float]:
    """The largest set of ``times`` that fall within BEAT_WINDOW_S of one phase of ``period``."""
    phases = sorted((t % period, t) for t in times)
    circle = phases + [(phase + period, t) for phase, t in phases]  # the beat may straddle 0
    best: list[float] = []
    end = 0
    for start in range(len(phases)):
        end = max(end, start)
        while end < len(circle) and circle[end][0] - circle[start][0] <= 2 * BEAT_WINDOW_S:
            end += 1
        if end - start > len(best):
            best = [t for _, t in circle[start:end]]
    return best


def beats(times: list[float]) -> list[tuple[float, int]]:
    """Periodic stalls among the slow answers' times: (period s, answers on its beat), strongest
    first. Random times fall on any beat by chance (a share 2 * BEAT_WINDOW_S / period of them), so
    a period is judged by how far its count stands above that chance, in standard deviations (at
    least BEAT_Z; and BEAT_MIN answers and a third of them, as among thousands of periods one
    holds a few random answers). A fraction of the true period holds the same answers with twice
    the chance, so the true one stands highest. Its answers are set aside before the next beat is
    looked for."""
    found: list[tuple[float, int]] = []
    left = sorted(times)
    while len(left) >= BEAT_MIN:
        best: tuple[float, float, list[float]] = (0.0, 0.0, [])
        for period in BEAT_PERIODS_S:
            share = 2 * BEAT_WINDOW_S / period
            chance = len(left) * share
            held = on_beat(left, period)
            z = (len(held) - chance) / math.sqrt(chance * (1 - share))
            if z > best[0]:
                best = (z, period, held)
        z, period, held = best
        if z < BEAT_Z or len(held) < max(BEAT_MIN, len(left) / 3):
            break
        found.append((period, len(held)))
        kept = set(held)
        left = [t for t in left if t not in kept]
    return found


def sampling_daemon() -> str | None:
    """Linux's DAMON, when it runs here: it samples memory every sample_us, which stalls woken
    processes for a few ms each time (seen on the bench machine as a 512 ms beat, with any server)."""
    for state in Path("/sys/kernel/mm/damon/admin/kdamonds").glob("*/state"):
        try:
            if state.read_text().strip() != "on":
                continue
            sample = state.parent / "contexts/0/monitoring_attrs/intervals/sample_us"
            return f"DAMON (kdamond) is on and samples memory every {int(sample.read_text()) / 1000:g} ms"
        except (OSError, ValueError):
            continue
    return None


def describe_trace(trace: list[tuple[float, float]]) -> str:
    latencies = sorted(ms for _, ms in trace)
    slow = [(at, ms) for at, ms in trace if ms > TRACE_LIMIT_MS]
    lines = [
        f"{len(trace)} requests on one connection: p50 {latencies[len(latencies) // 2]:.2f} ms, "
        f"p99 {latencies[int(len(latencies) * 0.99)]:.2f} ms, worst {latencies[-1]:.2f} ms; "
        f"{len(slow)} above {TRACE_LIMIT_MS:g} ms" + (":" if slow else "."),
    ]
    lines += [f"  at {at:7.3f} s: {ms:.2f} ms" for at, ms in slow[:50]]
    if len(slow) > 50:
        lines.append(f"  ... and {len(slow) - 50} more")
    for period, count in beats([at for at, _ in slow]):
        lines.append(f"  a beat: {count} of the {len(slow)} fall every {period * 1000:.1f} ms (±10 ms)")
    return "\n".join(lines)
