"""The bounds of a migration run as plain logic, in process: settings read from the environment,
the back-off schedule, how a failed attempt is classified and retried, and how a signal stops
the run. No database: the retry loop gets a stand-in connection, and a stopper that records its
pauses instead of sleeping. The same rules against real PostgreSQL: integration/test_bounds.py."""

from __future__ import annotations

import signal
import threading
from typing import Any

import pytest
from sqlalchemy.exc import DBAPIError

from jotc_migrations.bounds import (
    MAX_BACKOFF_SECONDS,
    Bounds,
    Stopper,
    backoff_seconds,
    first_line,
    milliseconds,
    sqlstate,
    stop_on_signals,
    with_lock_retries,
)
from jotc_migrations.errors import (
    EXIT_LOCK_NOT_ACQUIRED,
    EXIT_MIGRATION_FAILED,
    EXIT_STATEMENT_TIMEOUT,
    EXIT_UNAVAILABLE,
    MigrateError,
)


def test_bad_bound_settings_are_named() -> None:
    with pytest.raises(Exception, match="JOTC_MIGRATE_LOCK_TIMEOUT"):
        Bounds.from_env({"JOTC_MIGRATE_LOCK_TIMEOUT": "soon"})


def test_worst_case_of_the_defaults_fits_the_charts_job_deadline() -> None:
    worst = Bounds().worst_case_seconds()
    assert worst < 240, f"one run may take {worst:g} s; the chart's Job deadline is 240 s"


def test_settings_come_from_the_environment() -> None:
    bounds = Bounds.from_env(
        {
            "JOTC_MIGRATE_LOCK_WAIT_SECONDS": "2",
            "JOTC_MIGRATE_LOCK_TIMEOUT": " 0.5 ",
            "JOTC_MIGRATE_LOCK_RETRIES": "3",
            "JOTC_MIGRATE_STATEMENT_TIMEOUT": "",  # empty: the default
        }
    )
    assert bounds == Bounds(
        lock_wait_seconds=2, lock_timeout_seconds=0.5, lock_retries=3, statement_timeout_seconds=60
    ), f"read {bounds}"
    assert Bounds.from_env({}) == Bounds(), "no variables set should mean the defaults"


def test_a_setting_below_its_minimum_is_refused_with_its_name() -> None:
    with pytest.raises(MigrateError, match="JOTC_MIGRATE_STATEMENT_TIMEOUT must be 1 or more") as e:
        Bounds.from_env({"JOTC_MIGRATE_STATEMENT_TIMEOUT": "0.5"})
    assert e.value.exit_code == EXIT_UNAVAILABLE, f"exit code {e.value.exit_code}"


def test_backoff_doubles_up_to_its_ceiling() -> None:
    schedule = [backoff_seconds(attempt) for attempt in range(1, 7)]
    assert schedule == [1, 2, 4, 8, MAX_BACKOFF_SECONDS, MAX_BACKOFF_SECONDS], (
        f"back-off {schedule}"
    )


def test_worst_case_adds_the_lock_wait_every_attempt_and_every_backoff() -> None:
    bounds = Bounds(lock_wait_seconds=10, lock_timeout_seconds=2, lock_retries=2)
    # 10 s for the migration lock, 3 attempts of 2 s, back-offs of 1 and 2 s.
    assert bounds.worst_case_seconds() == 10 + 3 * 2 + 1 + 2, f"{bounds.worst_case_seconds()}"


def test_settings_are_sent_to_postgresql_in_milliseconds() -> None:
    assert milliseconds(0.5) == "500ms", milliseconds(0.5)
    assert milliseconds(60) == "60000ms", milliseconds(60)


def database_error(
    code: str | None, message: str = "canceling statement\nDETAIL: more"
) -> DBAPIError:
    """What SQLAlchemy raises for a driver error with this SQLSTATE."""

    class DriverError(Exception):
        sqlstate = code

    return DBAPIError("ALTER TABLE jump_requests ...", {}, DriverError(message))


class FakeConnection:
    def __init__(self) -> None:
        self.rollbacks = 0

    def rollback(self) -> None:
        self.rollbacks += 1


class RecordingStopper(Stopper):
    """A stopper that records the pauses it is asked for instead of waiting them out."""

    def __init__(self) -> None:
        super().__init__()
        self.pauses: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.check()


def retrying(failures: list[DBAPIError], bounds: Bounds) -> tuple[Any, list[str], RecordingStopper]:
    """Run with_lock_retries on work that raises each of failures in turn, then returns "done"."""
    connection, stopper, said = FakeConnection(), RecordingStopper(), []
    pending = list(failures)

    def work() -> str:
        if pending:
            raise pending.pop(0)
        return "done"

    result = with_lock_retries(connection, bounds, stopper, said.append, work)  # type: ignore[arg-type]
    assert connection.rollbacks == len(failures), f"{connection.rollbacks} rollbacks"
    return result, said, stopper


def test_a_lock_timeout_is_retried_after_a_backoff() -> None:
    result, said, stopper = retrying([database_error("55P03")] * 2, Bounds(lock_retries=2))
    assert result == "done", f"returned {result!r}"
    assert len(said) == 2, f"expected a line per retry: {said}"
    assert all("retrying in" in line for line in said), said
    assert said[0].startswith("attempt 1: canceling statement;"), f"first line only: {said[0]}"
    # 1 s then 2 s, each +-20 %.
    assert 0.8 <= stopper.pauses[0] <= 1.2, f"pauses {stopper.pauses}"
    assert 1.6 <= stopper.pauses[1] <= 2.4, f"pauses {stopper.pauses}"


def test_lock_timeouts_past_the_retries_give_up_with_exit_3() -> None:
    with pytest.raises(MigrateError) as raised:
        retrying([database_error("55P03")] * 3, Bounds(lock_retries=2))
    assert raised.value.exit_code == EXIT_LOCK_NOT_ACQUIRED, f"exit code {raised.value.exit_code}"
    assert "gave up after 3 attempts" in str(raised.value), str(raised.value)
    assert "lock_timeout 5 s" in str(raised.value), str(raised.value)


def test_a_statement_timeout_is_not_retried() -> None:
    with pytest.raises(MigrateError, match="statement_timeout") as raised:
        retrying([database_error("57014")], Bounds())
    assert raised.value.exit_code == EXIT_STATEMENT_TIMEOUT, f"exit code {raised.value.exit_code}"


def test_any_other_database_error_fails_the_migration() -> None:
    with pytest.raises(MigrateError, match="migration failed and was rolled back") as raised:
        retrying([database_error("42P07", 'relation "x" already exists')], Bounds())
    assert raised.value.exit_code == EXIT_MIGRATION_FAILED, f"exit code {raised.value.exit_code}"
    assert 'relation "x" already exists' in str(raised.value), str(raised.value)


def test_a_signal_during_a_retry_stops_the_run() -> None:
    stopper = RecordingStopper()
    stopper(signal.SIGINT, None)

    def work() -> None:
        raise database_error("55P03")

    with pytest.raises(MigrateError, match="stopped by SIGINT") as raised:
        with_lock_retries(FakeConnection(), Bounds(), stopper, print, work)  # type: ignore[arg-type]
    assert raised.value.exit_code == 130, f"exit code {raised.value.exit_code}"


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_cancels_the_running_statement_and_sets_the_exit_code(
    signum: signal.Signals, code: int
) -> None:
    cancelled = []

    class Driver:
        def cancel_safe(self, timeout: float) -> None:
            cancelled.append(timeout)

    stopper = Stopper()
    stopper.check()  # nothing yet
    stopper.connection = Driver()  # type: ignore[assignment]
    stopper(signum, None)
    assert cancelled == [5], f"cancel requests sent: {cancelled}"
    with pytest.raises(MigrateError, match=f"stopped by {signum.name}") as raised:
        stopper.sleep(60)  # returns at once: the signal has come
    assert raised.value.exit_code == code, f"exit code {raised.value.exit_code}, expected {code}"


def test_a_failed_cancel_request_still_stops() -> None:
    class Broken:
        def cancel_safe(self, timeout: float) -> None:
            raise OSError("connection gone")

    stopper = Stopper()
    stopper.connection = Broken()  # type: ignore[assignment]
    stopper(signal.SIGTERM, None)
    assert stopper.signal == signal.SIGTERM, f"remembered {stopper.signal}"


def test_signal_handlers_are_installed_for_the_run_and_restored() -> None:
    before = signal.getsignal(signal.SIGTERM)
    stopper = Stopper()
    with stop_on_signals(stopper):
        assert signal.getsignal(signal.SIGTERM) is stopper, "SIGTERM not handled by the stopper"
        assert signal.getsignal(signal.SIGINT) is stopper, "SIGINT not handled by the stopper"
    assert signal.getsignal(signal.SIGTERM) is before, "SIGTERM's handler was not restored"


def test_outside_the_main_thread_no_handler_is_installed() -> None:
    before = signal.getsignal(signal.SIGTERM)
    seen = []

    def run() -> None:
        with stop_on_signals(Stopper()) as stopper:
            seen.append((stopper, signal.getsignal(signal.SIGTERM)))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=10)
    assert seen, "stop_on_signals did not run in the thread"
    assert seen[0][1] is before, "a handler was installed from another thread"


def test_messages_keep_the_first_line_and_the_sqlstate() -> None:
    error = database_error("55P03", "lock timeout\nCONTEXT: ALTER TABLE")
    assert first_line(error) == "lock timeout", first_line(error)
    assert sqlstate(error) == "55P03", sqlstate(error)
    assert first_line(ValueError("")) == "ValueError", "an empty message names the exception type"
