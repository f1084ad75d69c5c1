"""The jotc-migrate command: bring the database to the schema this build expects, or check it.

    jotc-migrate upgrade [--wait SECONDS] [--serving REV] [--allow-breaking]
                                            wait for PostgreSQL, then upgrade to head (default)
    jotc-migrate check   [--wait SECONDS]   exit 0 when this build may serve the database
    jotc-migrate downgrade REVISION [--serving REV] [--allow-breaking]
                                            e.g. ``base`` to remove every table

Exit codes are in ``errors.py`` (and the README); every failure is one line on
stderr saying what to do. How long it may wait and run, and how it stops, is
``bounds.py``; which databases a build may serve, ``compat.py``; which
revisions a migration may pass through while a release serves, ``serving.py``.

Several pods may run ``upgrade`` at once: each takes a PostgreSQL advisory lock
before looking at the schema, so they run one after another and the later ones
find nothing left to do.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError
from opentelemetry import trace
from sqlalchemy import Connection, create_engine, pool, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError

from jotc_migrations import __version__, compat, serving
from jotc_migrations.bounds import (
    KEEPALIVES,
    Bounds,
    Stopper,
    configure_session,
    first_line,
    migration_lock,
    stop_on_signals,
    with_lock_retries,
)
from jotc_migrations.database import DatabaseURLError, describe, sqlalchemy_url
from jotc_migrations.errors import (
    EXIT_NOT_AT_HEAD,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    MigrateError,
)

DEFAULT_WAIT_SECONDS = 60.0
CONNECT_TIMEOUT_SECONDS = 5
# Extra Alembic version directories (os.pathsep-separated), searched after the product's own:
# for tests and for rehearsing a migration against a copy; never set in production.
EXTRA_VERSIONS = "JOTC_MIGRATE_EXTRA_VERSIONS"
# The defaults of --serving and --allow-breaking (the chart's migration Job sets them).
SERVING_REVISION = "JOTC_MIGRATE_SERVING_REVISION"
ALLOW_BREAKING = "JOTC_MIGRATE_ALLOW_BREAKING"
OTLP_PROTOCOL = "http/protobuf"  # the one OTLP protocol this build carries, as the API's

T = TypeVar("T")


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(files("jotc_migrations") / "alembic"))
    extra = [path for path in os.environ.get(EXTRA_VERSIONS, "").split(os.pathsep) if path]
    if extra:
        config.set_main_option("path_separator", "os")
        own = str(files("jotc_migrations") / "alembic" / "versions")
        config.set_main_option("version_locations", os.pathsep.join([own, *extra]))
    return config


def product_head() -> str:
    """The head of this build's own migrations, whatever JOTC_MIGRATE_EXTRA_VERSIONS adds: where
    a test-only revision attaches."""
    head = ScriptDirectory(str(files("jotc_migrations") / "alembic")).get_current_head()
    assert head is not None
    return head


def head_revision() -> str:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:
        raise MigrateError(f"this build has {len(heads)} migration heads; expected one", 2)
    return heads[0]


def with_connection(
    url: URL, wait_seconds: float, work: Callable[[Connection], T], stopper: Stopper | None = None
) -> T:
    """Connect, retrying until wait_seconds have passed, then run work on the connection. With a
    stopper, SIGTERM/SIGINT cancel whatever the connection is running on the server."""
    engine = create_engine(
        url,
        poolclass=pool.NullPool,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS, **KEEPALIVES},
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
                if stopper is not None:
                    stopper.connection = connection.connection.driver_connection
                try:
                    return work(connection)
                finally:
                    if stopper is not None:
                        stopper.connection = None
    finally:
        engine.dispose()


def current_revision(connection: Connection) -> str | None:
    heads = MigrationContext.configure(connection).get_current_heads()
    connection.commit()
    return heads[0] if heads else None


@dataclass(frozen=True)
class Move:
    """What one run of upgrade or downgrade is asked to do: where to take the schema, and whom it
    must not strand on the way (``serving.py``)."""

    upgrade: bool
    target: str  # an Alembic destination: "head", "base", a revision or a relative step
    serving: str | None = None  # --serving; None: what the running pods report (serving.py)
    allow_breaking: bool = False

    @property
    def verb(self) -> str:
        return "upgrade" if self.upgrade else "downgrade"

    def span(self, before: str | None) -> tuple[str | None, str | None]:
        """The upper and lower ends of what the move passes through, for iterate_revisions."""
        return (self.target, before) if self.upgrade else (before, self.target)

    def run(self, config: Config) -> None:
        if self.upgrade:
            command.upgrade(config, self.target)
        else:
            command.downgrade(config, self.target)


@contextlib.contextmanager
def migration_session(connection: Connection, stopper: Stopper) -> Iterator[Bounds]:
    """What every command that writes runs in: a direct connection (no pooler), the session's
    bounds, and the migration lock."""
    bounds = Bounds.from_env()
    refuse_a_pooler(connection)
    configure_session(connection, bounds)
    with migration_lock(connection, bounds, stopper, log):
        yield bounds


def migrate(connection: Connection, stopper: Stopper, move: Move) -> tuple[str | None, str | None]:
    """Run an Alembic command under the lock and the session's bounds, if the guard allows it;
    return the revisions before and after."""
    with migration_session(connection, stopper) as bounds:
        before = current_revision(connection)
        trace.get_current_span().set_attribute("db.migration.from", before or "empty")
        if before is not None and before not in known_revisions():
            newer_database(connection, before)
            after: str | None = before
        else:
            config = alembic_config()
            guard(connection, ScriptDirectory.from_config(config), before, move)
            config.attributes["connection"] = connection

            def attempt() -> None:
                move.run(config)
                connection.commit()

            with_lock_retries(connection, bounds, stopper, log, attempt)
            after = current_revision(connection)
            trace.get_current_span().set_attribute("db.migration.to", after or "empty")
        return before, after


def guard(connection: Connection, scripts: ScriptDirectory, before: str | None, move: Move) -> None:
    """Refuse a move that takes the database where the serving release cannot follow: an upgrade
    through a revision compatible back only to something newer than the serving revision, or a
    downgrade below it (``serving.py``). With allow_breaking, say what it strands and go on."""
    reported = serving.readers(connection)
    connection.commit()
    revisions = scripts.revision_map
    found = serving.serving_revision(
        revisions, move.serving, f"--serving or {SERVING_REVISION}", reported, before
    )
    if found is None:
        return  # no schema and no pod reporting: nothing serves this database yet
    if found.warning is not None:
        log(f"warning: {found.warning}")
    serving_revision, source = found.revision, found.source
    try:
        moved = [script.revision for script in scripts.iterate_revisions(*move.span(before))]
    except RevisionError as exc:
        raise MigrateError(
            f"cannot {move.verb} to {move.target}: {first_line(exc)}", EXIT_UNAVAILABLE
        ) from None
    if not moved:
        return
    if move.upgrade:
        passed, lowest = moved[::-1], before
    else:
        # What a downgrade lands on, newest first: the revisions below each one it removes.
        below = compat.chain(revisions, revisions.get_revision(before))[1:]
        passed = below[: len(moved)]
        lowest = below[len(moved) - 1] if len(moved) <= len(below) else None
    target = head_revision() if move.upgrade else lowest or "base"
    trace.get_current_span().set_attribute("jotc.migrate.serving", serving_revision)
    runs = f"the running release serves {serving_revision} ({source})"
    if serving_revision not in serving.known(revisions):
        if found.reported:
            advice = (
                "a newer build's pods serve it: pass --serving with the revision this "
                f"{move.verb} must keep serving to override"
            )
        else:
            advice = (
                "pass --serving with the running release's head (`jotc-migrate head` in its image)"
            )
        breach(
            move,
            target,
            f"the serving revision {serving_revision} ({source}) is not one of this build's "
            f"migrations ({head_revision()} and its ancestors)",
            advice,
        )
        return
    if not move.upgrade and serving.position(revisions, lowest) < serving.position(
        revisions, serving_revision
    ):
        breach(
            move,
            target,
            f"{runs} and cannot serve a database at {target}, which is older",
            f"roll the release back to one built for {target} first and let its pods replace "
            f"{serving_revision}'s{aged_out(found)}",
        )
        return
    stranding = serving.first_stranding(revisions, serving_revision, passed)
    if stranding is not None:
        breach(
            move,
            target,
            f"{runs}, and {stranding.revision} is compatible back to {stranding.back_to} only, "
            "so its pods would turn unready",
            f"deploy a release built for {stranding.back_to} first and let it replace "
            f"{serving_revision}'s pods{aged_out(found)}",
        )


def aged_out(found: serving.Serving) -> str:
    """When the pods reported the serving revision: how long after its last pod stops its report
    still counts, so the operator knows when to retry."""
    if not found.reported:
        return ""
    return (
        f" (their report in {serving.READERS_TABLE} counts until "
        f"{serving.READERS_TTL_SECONDS} s after the last one stops)"
    )


def breach(move: Move, target: str, problem: str, advice: str) -> None:
    """Refuse the move in one line, or, when breaking is intended, warn in one line."""
    if move.allow_breaking:
        log(f"warning: {move.verb} to {target} goes ahead (--allow-breaking) although {problem}")
        return
    raise MigrateError(
        f"refusing to {move.verb} to {target}: {problem}; {advice}, or pass --allow-breaking "
        f"({ALLOW_BREAKING}=true) if stopping it is intended",
        EXIT_NOT_AT_HEAD,
    )


def refuse_a_pooler(connection: Connection) -> None:
    """A migration keeps state in its session (the migration lock, its timeouts), which a
    connection pooler such as PgBouncer would hand to other clients between transactions: refuse
    one. PostgreSQL announces its backend's process id when a connection opens; a pooler announces
    one of its own making, so the two differ exactly when something pools in between."""
    driver = connection.connection.driver_connection
    assert driver is not None  # an open connection has its psycopg connection
    announced = driver.info.backend_pid
    serving = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
    connection.commit()
    if announced != serving:
        raise MigrateError(
            "DATABASE_URL leads through a connection pooler (PgBouncer or the like); migrations "
            "need a direct connection to PostgreSQL: give jotc-migrate PostgreSQL's own address",
            EXIT_UNAVAILABLE,
        )


def newer_database(connection: Connection, revision: str) -> None:
    """The database is ahead of this build (a rolled-back release, an old image re-run): nothing
    to upgrade. Fine when it is still compatible with this build, an error when not."""
    problem = compat.problem(compat.read_state(connection, head_revision()))
    connection.commit()
    if problem is not None:
        raise MigrateError(f"database {problem}", EXIT_NOT_AT_HEAD)
    log(
        f"database is at {revision}, newer than this build's {head_revision()} "
        "and compatible with it"
    )


def run_migration(url: URL, wait_seconds: float, work: Callable[[Connection, Stopper], T]) -> T:
    """Run work on a connection that SIGTERM/SIGINT cancel on the server."""
    stopper = Stopper()
    with stop_on_signals(stopper):
        return with_connection(url, wait_seconds, lambda c: work(c, stopper), stopper)


def upgrade(url: URL, wait_seconds: float, move: Move) -> None:
    before, after = run_migration(url, wait_seconds, lambda c, s: migrate(c, s, move))
    if before == after:
        log(f"database {describe(url)} already at revision {after}; nothing to do")
    else:
        log(f"database {describe(url)} upgraded from {before or 'empty'} to {after}")


def downgrade(url: URL, move: Move) -> None:
    before, after = run_migration(url, 0, lambda c, s: migrate(c, s, move))
    log(f"database {describe(url)} downgraded from {before or 'empty'} to {after or 'empty'}")


def schema_problem(url: URL, wait_seconds: float) -> str | None:
    """None when this build may serve the database (at head, or newer and compatible), else why
    not; polls until wait_seconds pass."""
    head = head_revision()
    deadline = time.monotonic() + wait_seconds
    while True:
        state = with_connection(url, max(0.0, deadline - time.monotonic()), lambda c: read(c, head))
        problem = compat.problem(state)
        if problem is None:
            if state.revision != head:
                log(
                    f"database {describe(url)} is at {state.revision}, "
                    f"newer than {head} and compatible with it"
                )
            return None
        if time.monotonic() >= deadline:
            return f"database {describe(url)} {problem}"
        time.sleep(1.0)


def read(connection: Connection, own: str) -> compat.SchemaState:
    state = compat.read_state(connection, own)
    connection.commit()
    return state


def known_revisions() -> set[str]:
    return serving.known(ScriptDirectory.from_config(alembic_config()).revision_map)


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


def flag(env: Mapping[str, str], name: str) -> bool:
    """A yes/no setting: true for 1, true, yes; false when empty or 0, false, no; any other value
    is refused rather than guessed."""
    value = env.get(name, "").strip().lower()
    if value in {"1", "true", "yes"}:
        return True
    if value in {"", "0", "false", "no"}:
        return False
    raise MigrateError(
        f"{name} is {env[name]!r}; set it to true or false (or 1/0, yes/no)", EXIT_UNAVAILABLE
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    env_wait = os.environ.get("JOTC_MIGRATE_WAIT_SECONDS")
    try:
        default_wait = seconds(env_wait) if env_wait else DEFAULT_WAIT_SECONDS
    except argparse.ArgumentTypeError as exc:
        raise MigrateError(f"JOTC_MIGRATE_WAIT_SECONDS {exc}", EXIT_UNAVAILABLE) from None
    default_serving = os.environ.get(SERVING_REVISION, "").strip() or None
    default_allow_breaking = flag(os.environ, ALLOW_BREAKING)
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
    for moving in (up, down):
        moving.add_argument(
            "--serving",
            default=default_serving,
            metavar="REVISION",
            help=f"the revision the running release serves, overriding what its pods report "
            f"(default {SERVING_REVISION}; unset: the oldest revision running pods reported in "
            f"{serving.READERS_TABLE} in the last {serving.READERS_TTL_SECONDS} s, else the "
            "database's)",
        )
        moving.add_argument(
            "--allow-breaking",
            action="store_true",
            default=default_allow_breaking,
            help=f"go ahead even if the running release cannot serve the result ({ALLOW_BREAKING})",
        )
    commands.add_parser("head", help="print the revision this build expects")
    words = list(sys.argv[1:] if argv is None else argv)
    if not words or (words[0].startswith("-") and words[0] not in {"-h", "--help"}):
        words.insert(0, "upgrade")  # the image's default: `jotc-migrate [--wait N]` upgrades
    return parser.parse_args(words)


def tracing_wanted(env: Mapping[str, str]) -> bool:
    """The API's rule (docs/observability.md): traces when OTEL_TRACES_EXPORTER names an exporter
    or an OTLP endpoint is set, unless OTEL_TRACES_EXPORTER=none or OTEL_SDK_DISABLED=true."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return any(env.get(f"OTEL_EXPORTER_OTLP_{part}ENDPOINT") for part in ("", "TRACES_"))


def trace_exporters(env: Mapping[str, str]) -> list[str]:
    """The exporters the OTEL_* variables ask for, by the API's rule (jotc_api.tracing: the two
    packages share no code): none when tracing is off; else the OTEL_TRACES_EXPORTER list, otlp
    by default. A name or an OTLP protocol this build lacks stops the command before it starts."""
    if not tracing_wanted(env):
        return []
    listed = env.get("OTEL_TRACES_EXPORTER") or "otlp"
    names = [name.strip().lower() for name in listed.split(",")]
    unknown = [name for name in names if name not in {"otlp", "console", "none"}]
    if unknown:
        raise MigrateError(
            f"OTEL_TRACES_EXPORTER must be otlp, console or none, got {unknown[0]!r}",
            EXIT_UNAVAILABLE,
        )
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL"
    )
    if "otlp" in names and protocol and protocol.strip() != OTLP_PROTOCOL:
        raise MigrateError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL must be {OTLP_PROTOCOL}, got {protocol!r}",
            EXIT_UNAVAILABLE,
        )
    return [name for name in names if name != "none"]


@contextlib.contextmanager
def traced_run(exporters: Sequence[str]) -> Iterator[trace.Span]:
    """The run as one span (its revisions before and after as attributes), exported before the
    command exits to each of ``exporters`` (trace_exporters): OTLP over HTTP (endpoint,
    headers... from OTEL_EXPORTER_OTLP_*) or the console's (stderr); a no-op span without any."""
    if not exporters:
        yield trace.INVALID_SPAN
        return
    from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    detected = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES win, as in the API
    defaults = Resource({SERVICE_NAME: "jotc-migrate", SERVICE_VERSION: __version__})
    named = not str(detected.attributes.get(SERVICE_NAME, "")).startswith("unknown_service")
    resource = defaults.merge(detected) if named else detected.merge(defaults)
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    for name in exporters:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        else:
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
    try:
        with provider.get_tracer("jotc_migrations").start_as_current_span("jotc-migrate") as span:
            yield span
    finally:
        provider.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        exporters = trace_exporters(os.environ)
    except MigrateError as exc:
        log(str(exc))
        return exc.exit_code
    with traced_run(exporters) as span:
        code = run_command(argv, span)
        span.set_attribute("process.exit.code", code)
        if code != EXIT_OK:
            span.set_status(trace.StatusCode.ERROR)
        return code


def run_command(argv: Sequence[str] | None, span: trace.Span) -> int:
    try:
        args = parse_args(argv)
        span.set_attribute("jotc.migrate.command", args.command)
        if args.command == "head":
            print(head_revision())
            return EXIT_OK
        url = sqlalchemy_url(os.environ.get("DATABASE_URL"))
        if args.command == "upgrade":
            upgrade(url, args.wait, Move(True, "head", args.serving or None, args.allow_breaking))
        elif args.command == "downgrade":
            downgrade(url, Move(False, args.revision, args.serving or None, args.allow_breaking))
        else:
            problem = schema_problem(url, args.wait)
            if problem is not None:
                log(problem)
                return EXIT_NOT_AT_HEAD
            log(f"database {describe(url)} can be served by this build ({head_revision()})")
        return EXIT_OK
    except DatabaseURLError as exc:
        log(str(exc))
        return EXIT_UNAVAILABLE
    except MigrateError as exc:
        log(str(exc))
        return exc.exit_code
    except CommandError as exc:
        log(first_line(exc))
        return EXIT_UNAVAILABLE


if __name__ == "__main__":
    sys.exit(main())
