"""The main process's signal handlers, as a forked worker still starting runs them: it ends at once,
as the signal's default action would, and never starts a drain of its own."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

from jotc_api import server


def draining_server(main_pid: int) -> Any:
    made = object.__new__(server.DrainingServer)  # the handlers' state only: no Granian server behind it
    made.main_pid = main_pid
    made.drain_seconds = 30.0
    made.drain_started = None
    made.drain_timer = None
    made.drain = None  # begin_drain() would fail on it: the tests show it is never called in a worker
    return made


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_worker_still_starting_ends_on_sigterm_or_sigint(monkeypatch: pytest.MonkeyPatch, signum: int) -> None:
    handled: list[tuple[str, int, object]] = []
    monkeypatch.setattr(server.signal, "signal", lambda sig, action: handled.append(("signal", sig, action)))
    monkeypatch.setattr(server.os, "kill", lambda pid, sig: handled.append(("kill", sig, pid)))
    worker = draining_server(main_pid=os.getpid() + 1)
    worker.signal_handler_interrupt(signum, None)
    assert handled == [("signal", signum, signal.SIG_DFL), ("kill", signum, os.getpid())], (
        "the worker did not end by the signal's default action"
    )
    assert worker.drain_timer is None, "a worker started a drain timer of its own"


def test_a_worker_ignores_the_drain_signal() -> None:
    worker = draining_server(main_pid=os.getpid() + 1)
    worker.signal_handler_drain(signal.SIGUSR1, None)
    assert worker.drain_started is None, "a worker began the drain: that is the main process's part"


def test_the_main_process_is_not_mistaken_for_a_worker() -> None:
    assert not draining_server(main_pid=os.getpid()).in_worker()
    assert draining_server(main_pid=os.getpid() + 1).in_worker()
