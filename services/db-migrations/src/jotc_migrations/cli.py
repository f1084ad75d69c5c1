"""The jotc-migrate command: bring the database to the schema this build expects, or check it.

    jotc-migrate upgrade [--wait SECONDS]   wait for PostgreSQL, then upgrade to head (default)
    jotc-migrate check   [--wait SECONDS]   exit 0 when the database is at head, 1 when not
    jotc-migrate downgrade REVISION         e.g. ``base`` to remove every table

Exit codes: 0 done / at head; 1 not at head (check); 2 the database could not
be reached in time, or the configuration is wrong. Every failure is one line on
stderr saying what to do.

Several pods may run ``upgrade`` at once: each takes a PostgreSQL advisory lock
before looking at the schema, so they run one after another and the later ones
find nothing left to do.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib.resources import files
from typing import TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine, pool, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError

from jotc_migrations.database import DatabaseURLError, describe, sqlalchemy_url

# pg_advisory_lock key shared by every jotc-migrate process: "JOTC" in ASCII.
MIGRATION_LOCK_KEY = 0x4A4F5443
DEFAULT_WAIT_SECONDS = 60.0
CONNECT_TIMEOUT_SECONDS = 5

EXIT_OK = 0
EXIT_NOT_AT_HEAD = 1
EXIT_UNAVAILABLE = 2

T = TypeVar("T")


class MigrateError(Exception):
    """A failure that ends the command with a one-line message and an exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(files("jotc_migrations") / "alembic"))
    return config


def head_revision() -> str:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:
        raise MigrateError(f"this build has {len(heads)} migration heads; expected one", 2)
    return heads[0]


def with_connection(url: URL, wait_seconds: float, work: Callable[[Connection], T]) -> T:
    """Connect, retrying until wait_seconds have passed, then run work on the connection."""
    engine = create_engine(
        url, poolclass=pool.NullPool, connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS}
    )
    deadline = time.monotonic() + wait_seconds
    delay = 0.5
    attempt = 1
    try:
        while True:
            try:
                connection = engine.connect()
            except OperationalError as exc:
                reason = first_line(exc)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    waited = f" after {wait_seconds:g} s" if wait_seconds > 0 else ""
                    raise MigrateError(
                        f"PostgreSQL at {describe(url)} not reachable{waited}: {reason}",
                        EXIT_UNAVAILABLE,
                    ) from None
                log(f"waiting for PostgreSQL at {describe(url)} (attempt {attempt}): {reason}")
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, 5.0)
                attempt += 1
                continue
            with connection:
                return work(connection)
    finally:
        engine.dispose()


def current_revision(connection: Connection) -> str | None:
    heads = MigrationContext.configure(connection).get_current_heads()
    connection.commit()
    return heads[0] if heads else None


@contextmanager
def migration_lock(connection: Connection) -> Iterator[None]:
    """Hold the cluster-wide migration lock; other jotc-migrate processes wait for it."""
    connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    connection.commit()
    try:
        yield
    finally:
        connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
        connection.commit()


def migrate(connection: Connection, run: Callable[[Config], None]) -> tuple[str | None, str | None]:
    """Run an Alembic command under the lock; return the revisions before and after."""
    with migration_lock(connection):
        before = current_revision(connection)
        config = alembic_config()
        config.attributes["connection"] = connection
        run(config)
        connection.commit()
        return before, current_revision(connection)


def upgrade(url: URL, wait_seconds: float) -> None:
    before, after = with_connection(
        url, wait_seconds, lambda c: migrate(c, lambda cfg: command.upgrade(cfg, "head"))
    )
    if before == after:
        log(f"database {describe(url)} already at revision {after}; nothing to do")
    else:
        log(f"database {describe(url)} upgraded from {before or 'empty'} to {after}")


def downgrade(url: URL, revision: str) -> None:
    before, after = with_connection(
        url, 0, lambda c: migrate(c, lambda cfg: command.downgrade(cfg, revision))
    )
    log(f"database {describe(url)} downgraded from {before or 'empty'} to {after or 'empty'}")


def schema_problem(url: URL, wait_seconds: float) -> str | None:
    """None when the database is at head, else why not; polls until wait_seconds pass."""
    head = head_revision()
    deadline = time.monotonic() + wait_seconds
    while True:
        current = with_connection(url, max(0.0, deadline - time.monotonic()), current_revision)
        if current == head:
            return None
        if current is None:
            problem = "has no JOTC schema yet; run `jotc-migrate upgrade`"
        elif current in known_revisions():
            problem = (
                f"is at revision {current}, this build expects {head}; run jotc-migrate upgrade"
            )
        else:
            problem = (
                f"is at revision {current}, which this build does not know "
                f"(expects {head}); was it migrated by a newer release?"
            )
        if time.monotonic() >= deadline:
            return f"database {describe(url)} {problem}"
        time.sleep(1.0)


def known_revisions() -> set[str]:
    return {
        script.revision for script in ScriptDirectory.from_config(alembic_config()).walk_revisions()
    }


def first_line(exc: BaseException) -> str:
    message = str(getattr(exc, "orig", None) or exc).strip()
    return message.splitlines()[0] if message else type(exc).__name__


def log(message: str) -> None:
    print(f"jotc-migrate: {message}", file=sys.stderr, flush=True)


def seconds(value: str) -> float:
    try:
        parsed = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    if parsed < 0:
        raise argparse.ArgumentTypeError("must be 0 or more seconds")
    return parsed


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    env_wait = os.environ.get("JOTC_MIGRATE_WAIT_SECONDS")
    try:
        default_wait = seconds(env_wait) if env_wait else DEFAULT_WAIT_SECONDS
    except argparse.ArgumentTypeError as exc:
        raise MigrateError(f"JOTC_MIGRATE_WAIT_SECONDS {exc}", EXIT_UNAVAILABLE) from None
    parser = argparse.ArgumentParser(
        prog="jotc-migrate", description="Apply or check the JOTC database schema."
    )
    commands = parser.add_subparsers(dest="command")
    up = commands.add_parser("upgrade", help="wait for PostgreSQL, then upgrade to head")
    up.add_argument(
        "--wait",
        type=seconds,
        default=default_wait,
        metavar="SECONDS",
        help=f"how long to retry an unreachable database (default {default_wait:g})",
    )
    check = commands.add_parser("check", help="exit 0 when the schema is at head, 1 otherwise")
    check.add_argument(
        "--wait",
        type=seconds,
        default=0.0,
        metavar="SECONDS",
        help="keep checking this long for the schema to reach head (default 0)",
    )
    down = commands.add_parser("downgrade", help="downgrade to REVISION (e.g. base)")
    down.add_argument("revision")
    commands.add_parser("head", help="print the revision this build expects")
    words = list(sys.argv[1:] if argv is None else argv)
    if not words or (words[0].startswith("-") and words[0] not in {"-h", "--help"}):
        words.insert(0, "upgrade")  # the image's default: `jotc-migrate [--wait N]` upgrades
    return parser.parse_args(words)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        if args.command == "head":
            print(head_revision())
            return EXIT_OK
        url = sqlalchemy_url(os.environ.get("DATABASE_URL"))
        if args.command == "upgrade":
            upgrade(url, args.wait)
        elif args.command == "downgrade":
            downgrade(url, args.revision)
        else:
            problem = schema_problem(url, args.wait)
            if problem is not None:
                log(problem)
                return EXIT_NOT_AT_HEAD
            log(f"database {describe(url)} is at head {head_revision()}")
        return EXIT_OK
    except DatabaseURLError as exc:
        log(str(exc))
        return EXIT_UNAVAILABLE
    except MigrateError as exc:
        log(str(exc))
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
