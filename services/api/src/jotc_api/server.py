"""The jotc-api command: validate settings, size the worker pool, then run Granian.

The container's entrypoint and ``scripts/dev api`` both run this, so what runs
locally is what runs in production.

Stopping (drain.py says why): SIGTERM first drains for ``JOTC_DRAIN_SECONDS`` (listener open,
/readyz 503, ``Connection: close`` on every answer), then hands over to Granian's own shutdown:
stop accepting, finish in-flight requests, lifespan shutdown drains the recorder. SIGUSR1 starts
the drain without stopping; a later SIGTERM waits only for what is left of the delay. A second
SIGTERM, or SIGINT (Ctrl-C, which also reaches the workers directly), stops without delay.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from granian.server import Server

from jotc_api import tracing
from jotc_api.drain import FLAG_ENV, DrainFlag
from jotc_api.memory import CONTAINER_RESERVE, BudgetError, plan_request_memory
from jotc_api.settings import Settings, SettingsError, load_settings

CGROUP_V2_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
CGROUP_V2_MEMORY_MAX = Path("/sys/fs/cgroup/memory.max")
CGROUP_V1_MEMORY_LIMIT = Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")
UNLIMITED_V1 = 1 << 60  # cgroup v1 writes "no limit" as a number near 2**63


def cpu_quota(cpu_max: Path = CGROUP_V2_CPU_MAX) -> float | None:
    """CPUs granted by the container's cgroup quota, or None when unlimited or unknown."""
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        v1_quota = int(CGROUP_V1_QUOTA.read_text())
        if v1_quota > 0:
            return v1_quota / int(CGROUP_V1_PERIOD.read_text())
    except (OSError, ValueError):
        pass
    return None


def memory_limit(paths: tuple[Path, ...] = (CGROUP_V2_MEMORY_MAX, CGROUP_V1_MEMORY_LIMIT)) -> int | None:
    """The container's memory limit in bytes, or None when unlimited or unknown."""
    for path in paths:
        try:
            raw = path.read_text().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < UNLIMITED_V1:
            return int(raw)
        return None
    return None


def worker_memory(settings: Settings, workers: int) -> int | None:
    """The memory each worker is given: JOTC_WORKER_MEMORY, else the container's limit, less what
    the main process and the sockets' buffers need, shared among the workers."""
    if settings.worker_memory is not None:
        return settings.worker_memory
    limit = memory_limit()
    return None if limit is None else max(limit - CONTAINER_RESERVE, 0) // workers


def available_cpus() -> int:
    """CPUs this process may use: the cgroup quota rounded down (at least 1: a fraction of a CPU
    shared by two workers is oversubscribed, not faster), capped by the affinity mask."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpus = affinity or 1
    quota = cpu_quota()
    if quota is not None:
        cpus = min(cpus, max(1, math.floor(quota)))
    return cpus


def prepare_metrics_dir() -> None:
    """prometheus_client's multiprocess mode: one directory all workers write and /metrics sums.
    Emptied at every start, so counters from a previous run do not leak in."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        path = Path(directory)
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True, exist_ok=True)
    else:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="jotc-metrics-")


def say(line: str) -> None:
    """A line on stderr, safe in a signal handler: one write, no buffer a handler could re-enter."""
    os.write(2, f"{line}\n".encode())


class DrainingServer(Server):  # type: ignore[misc,valid-type]
    """Granian's server, whose SIGTERM first drains, then runs Granian's own shutdown.

    Granian installs ``signal_handler_interrupt`` for SIGINT and SIGTERM in the main process and
    stops at once; this wraps that handler. Workers see the drain through the shared flag."""

    def __init__(self, *args: Any, drain: DrainFlag, drain_seconds: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.drain = drain
        self.drain_seconds = drain_seconds
        self.drain_started: float | None = None
        self.drain_timer: threading.Thread | None = None
        self.stop_now = threading.Event()
        self.main_pid = os.getpid()

    def in_worker(self) -> bool:
        """Granian forks its workers, which run these handlers until its worker code installs its
        own: a worker signalled while still starting must not take the main process's part."""
        return os.getpid() != self.main_pid

    def begin_drain(self) -> None:
        if self.drain_started is None:
            self.drain_started = time.monotonic()
            self.drain.begin()
            say(f"jotc-api: draining for {self.drain_seconds:g} s")

    def signal_handler_drain(self, *_: Any) -> None:
        if not self.in_worker():  # starting the drain is the main process's part
            self.begin_drain()

    def signal_handler_interrupt(self, signum: int | None = None, *args: Any, **kwargs: Any) -> None:
        if self.in_worker():
            # A worker still starting: end as the signal's default action would, at once. (It used
            # to start a drain timer of its own and hold the shutdown up for the whole delay.)
            stop = signum or signal.SIGTERM
            signal.signal(stop, signal.SIG_DFL)
            os.kill(os.getpid(), stop)
            return
        if signum == signal.SIGTERM and self.drain_seconds and self.drain_timer is None:
            self.begin_drain()
            self.drain_timer = threading.Thread(target=self.stop_after_drain, name="jotc-drain", daemon=True)
            self.drain_timer.start()
        elif self.drain_timer is not None:
            self.stop_now.set()  # a second SIGTERM, or SIGINT: skip what is left of the delay
        else:
            super().signal_handler_interrupt(signum, *args, **kwargs)

    def stop_after_drain(self) -> None:
        assert self.drain_started is not None
        self.stop_now.wait(max(0.0, self.drain_started + self.drain_seconds - time.monotonic()))
        say("jotc-api: drain over; stopping")
        super().signal_handler_interrupt()

    def startup(self, spawn_target: Any, target_loader: Any) -> None:
        signal.signal(signal.SIGUSR1, self.signal_handler_drain)
        super().startup(spawn_target, target_loader)


def run(settings: Settings) -> None:
    from granian.constants import HTTPModes, Interfaces, Loops
    from granian.http import HTTP1Settings
    from granian.log import LogLevels

    workers = settings.workers or available_cpus()
    try:
        request_memory = plan_request_memory(
            request_memory=settings.request_memory,
            max_body_bytes=settings.max_body_bytes,
            max_clouds=settings.max_clouds,
            backpressure=settings.backpressure,
            worker_memory=worker_memory(settings, workers),
            workers=workers,
        )
    except BudgetError as exc:
        print(f"jotc-api: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    os.environ["JOTC_REQUEST_MEMORY"] = str(request_memory)  # what each worker's budget holds
    prepare_metrics_dir()
    drain = DrainFlag.create()
    assert drain.path is not None
    os.environ[FLAG_ENV] = str(drain.path)  # the workers inherit it and map the same byte
    server = DrainingServer(
        "jotc_api.asgi:create",
        factory=True,
        address=settings.host,
        port=settings.port,
        interface=Interfaces.ASGI,
        workers=workers,
        loop=Loops.uvloop,
        backpressure=settings.backpressure,
        # HTTP/1.1 only: Granian's HTTP/2 has limits of its own that the settings above do not
        # reach (header count and size, header read time), and the ingress speaks HTTP/2 to clients.
        http=HTTPModes.http1,
        respawn_failed_workers=True,
        # Slow clients: a connection that has not sent its headers in time is closed; headers past
        # the buffer are refused. Bodies are streamed and bounded by JOTC_MAX_BODY_BYTES.
        http1_settings=HTTP1Settings(
            header_read_timeout=int(settings.header_read_timeout * 1000),
            max_buffer_size=settings.max_header_bytes,
        ),
        workers_kill_timeout=int(settings.shutdown_timeout) + 2,
        log_level=LogLevels(settings.log_level.lower()) if settings.log_level != "CRITICAL" else LogLevels.critical,
        log_access=False,
        drain=drain,
        drain_seconds=settings.drain_seconds,
    )
    print(
        f"jotc-api {settings.version}: {workers} worker(s) on {settings.host}:{settings.port}",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.serve()
    finally:
        drain.remove()


def main() -> None:
    try:
        settings = load_settings()
        tracing.check()
    except (SettingsError, tracing.TracingError) as exc:
        print(f"jotc-api: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    run(settings)


if __name__ == "__main__":
    main()
