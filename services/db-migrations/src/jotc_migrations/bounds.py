"""How long a migration may wait and run, and how it stops, so it can never stall traffic.

- The cluster-wide migration lock is polled with ``pg_try_advisory_lock`` until
  a deadline, never waited for without one.
- Every statement runs under ``lock_timeout``: a migration that needs a table
  lock gives up after a few seconds instead of queueing, with every insert of
  the running API queued behind it; it is retried with back-off, a bounded
  number of times, each retry starting with that migration alone (the ones
  before it have committed).
- Every statement runs under ``statement_timeout``; a migration that needs
  longer raises it for itself with ``allow_statement_seconds``.
- SIGTERM or SIGINT (the Job's deadline, ``kubectl delete``, Ctrl-C) cancels the
  statement on the server, so the backend does not go on holding its locks
  and its place in the lock queue after the process is gone.
- TCP keepalives on both ends, and ``client_connection_check_interval`` on the
  server, so a vanished client's backend is noticed and ended.
"""

from __future__ import annotations

import os
import random
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from types import FrameType
from typing import Any, TypeVar

import psycopg
from alembic import op
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from jotc_migrations.errors import (
    EXIT_LOCK_NOT_ACQUIRED,
    EXIT_MIGRATION_FAILED,
    EXIT_STATEMENT_TIMEOUT,
    EXIT_UNAVAILABLE,
    MigrateError,
)

T = TypeVar("T")

# pg_advisory_lock key shared by every jotc-migrate process: "JOTC" in ASCII.
MIGRATION_LOCK_KEY = 0x4A4F5443
MAX_BACKOFF_SECONDS = 15.0
SIGNAL_EXIT = {signal.SIGTERM: 143, signal.SIGINT: 130}

# libpq's side of the connection: a dead server or network path is noticed within ~1 min.
KEEPALIVES: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "application_name": "jotc-migrate",
}


@dataclass(frozen=True)
class Bounds:
    """The limits of one jotc-migrate run; defaults fit inside the chart's Job deadline."""

    lock_wait_seconds: float = 60.0
    lock_timeout_seconds: float = 5.0
    lock_retries: int = 5
    statement_timeout_seconds: float = 60.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Bounds:
        defaults = cls()

        def number(name: str, default: float, minimum: float) -> float:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                value = float(raw)
            except ValueError:
                raise MigrateError(
                    f"{name} must be a number, got {raw!r}", EXIT_UNAVAILABLE
                ) from None
            if value < minimum:
                raise MigrateError(
                    f"{name} must be {minimum:g} or more, got {raw}", EXIT_UNAVAILABLE
                )
            return value

        return cls(
            lock_wait_seconds=number(
                "JOTC_MIGRATE_LOCK_WAIT_SECONDS", defaults.lock_wait_seconds, 0
            ),
            lock_timeout_seconds=number(
                "JOTC_MIGRATE_LOCK_TIMEOUT", defaults.lock_timeout_seconds, 0.1
            ),
            lock_retries=int(number("JOTC_MIGRATE_LOCK_RETRIES", defaults.lock_retries, 0)),
            statement_timeout_seconds=number(
                "JOTC_MIGRATE_STATEMENT_TIMEOUT", defaults.statement_timeout_seconds, 1
            ),
        )

    def worst_case_seconds(self) -> float:
        """Upper bound of one run of one migration: lock wait, every attempt, every back-off."""
        attempts = self.lock_retries + 1
        backoff = sum(backoff_seconds(n) for n in range(1, attempts))
        return self.lock_wait_seconds + attempts * self.lock_timeout_seconds + backoff


def backoff_seconds(attempt: int) -> float:
    return float(min(2 ** (attempt - 1), MAX_BACKOFF_SECONDS))


def milliseconds(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


def allow_statement_seconds(seconds: float) -> None:
    """For a migration's ``upgrade()``: let this migration's statements run this long (SET LOCAL,
    so it ends with the migration's transaction)."""
    op.execute(f"SET LOCAL statement_timeout = '{milliseconds(seconds)}'")


def configure_session(connection: Connection, bounds: Bounds) -> None:
    settings = {
        "lock_timeout": milliseconds(bounds.lock_timeout_seconds),
        "statement_timeout": milliseconds(bounds.statement_timeout_seconds),
        "idle_in_transaction_session_timeout": "60s",
        # The server's side of the socket: probe an idle client, and (PostgreSQL 14+) check
        # during a long statement whether the client is still there.
        "tcp_keepalives_idle": "30",
        "tcp_keepalives_interval": "10",
        "tcp_keepalives_count": "3",
    }
    if int(connection.execute(text("SHOW server_version_num")).scalar_one()) >= 140000:
        settings["client_connection_check_interval"] = "5s"
    for name, value in settings.items():
        connection.execute(
            text("SELECT set_config(:name, :value, false)"), {"name": name, "value": value}
        )
    connection.commit()


class Stopper:
    """SIGTERM/SIGINT: cancel the running statement on the server and remember why."""

    def __init__(self) -> None:
        self.signal: signal.Signals | None = None
        self.event = threading.Event()
        self.connection: psycopg.Connection[Any] | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.signal = signal.Signals(signum)
        self.event.set()
        if self.connection is not None:
            # Best effort: the connection is closed on the way out anyway.
            with suppress(Exception):
                self.connection.cancel_safe(timeout=5)

    def check(self) -> None:
        if self.signal is not None:
            raise MigrateError(
                f"stopped by {self.signal.name}; the running statement was cancelled, rolled back",
                SIGNAL_EXIT.get(self.signal, 143),
            )

    def sleep(self, seconds: float) -> None:
        self.event.wait(seconds)
        self.check()


@contextmanager
def stop_on_signals(stopper: Stopper) -> Iterator[Stopper]:
    if threading.current_thread() is not threading.main_thread():
        yield stopper  # signals are delivered to the main thread only
        return
    previous = {sig: signal.signal(sig, stopper) for sig in SIGNAL_EXIT}
    try:
        yield stopper
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def migration_lock(
    connection: Connection, bounds: Bounds, stopper: Stopper, log: Callable[[str], None]
) -> Iterator[None]:
    """Hold the cluster-wide migration lock, polling for it until the deadline."""
    waited = 0.0
    delay = 0.25
    announced = False
    while not connection.execute(
        text("SELECT pg_try_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
    ).scalar_one():
        connection.commit()
        if waited >= bounds.lock_wait_seconds:
            holder = connection.execute(
                text(
                    "SELECT coalesce(string_agg(format('%s (%s, %s)', a.pid, a.application_name,"
                    " a.state), ', '), 'unknown') "
                    "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.locktype = 'advisory' AND l.objid = :key AND l.granted"
                ),
                {"key": MIGRATION_LOCK_KEY},
            ).scalar_one()
            raise MigrateError(
                f"the migration lock is still held after {bounds.lock_wait_seconds:g} s "
                f"by backend {holder}; "
                "another migration is running: let it finish (or cancel it), then retry",
                EXIT_LOCK_NOT_ACQUIRED,
            )
        if not announced:
            log("another jotc-migrate holds the migration lock; waiting")
            announced = True
        pause = min(delay, bounds.lock_wait_seconds - waited)
        stopper.sleep(pause)
        waited += pause
        delay = min(delay * 2, 2.0)
    connection.commit()
    try:
        yield
    finally:
        if not connection.closed and not connection.invalidated:
            connection.rollback()
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
            connection.commit()


def sqlstate(exc: DBAPIError) -> str | None:
    return getattr(exc.orig, "sqlstate", None)


def with_lock_retries(
    connection: Connection,
    bounds: Bounds,
    stopper: Stopper,
    log: Callable[[str], None],
    run: Callable[[], T],
) -> T:
    """Run ``run`` (an Alembic command); when a migration gives up on a table lock, roll it back
    and try again after a back-off, at most ``bounds.lock_retries`` times."""
    attempt = 1
    while True:
        try:
            return run()
        except DBAPIError as exc:
            connection.rollback()
            stopper.check()
            reason = first_line(exc)
            if sqlstate(exc) == "55P03":  # lock_not_available: lock_timeout expired
                if attempt > bounds.lock_retries:
                    raise MigrateError(
                        f"gave up after {attempt} attempts: {reason} (lock_timeout "
                        f"{bounds.lock_timeout_seconds:g} s); a long transaction holds a "
                        "conflicting lock: see pg_stat_activity, then retry",
                        EXIT_LOCK_NOT_ACQUIRED,
                    ) from None
                pause = backoff_seconds(attempt) * random.uniform(0.8, 1.2)  # noqa: S311
                log(f"attempt {attempt}: {reason}; retrying in {pause:.1f} s")
                stopper.sleep(pause)
                attempt += 1
                continue
            if sqlstate(exc) == "57014":  # query_canceled: statement_timeout
                raise MigrateError(
                    f"a statement ran past statement_timeout and was rolled back: {reason}; "
                    "a migration that needs longer calls allow_statement_seconds()",
                    EXIT_STATEMENT_TIMEOUT,
                ) from None
            raise MigrateError(
                f"migration failed and was rolled back: {reason}", EXIT_MIGRATION_FAILED
            ) from None


def first_line(exc: BaseException) -> str:
    message = str(getattr(exc, "orig", None) or exc).strip()
    return message.splitlines()[0] if message else type(exc).__name__
