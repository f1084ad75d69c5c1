"""scripts/dev: run JOTC on this machine without Docker, the twin of `docker compose up`."""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from types import FrameType

import common
import jotc_provision
from common import say

USAGE = """\
usage: scripts/dev [--throwaway] [stack|api|retention]

Runs JOTC on this machine without Docker, as `docker compose up` does with containers.

  stack (default)  migrate, then the API on 127.0.0.1:4000 and Locust's web UI on
                   127.0.0.1:8089, aimed at it
  api              migrate, then only the API
  retention        migrate, run jotc-retention once (JOTC_RETENTION_DAYS), and exit
  --throwaway      private PostgreSQL and Redis, started for this run and removed after it,
                   even when DATABASE_URL / REDIS_URL are set or servers listen on 5432 / 6379
  -h, --help       this text

Settings come from the environment, then from .env at the repository root (the file
`docker compose` reads; .env.example lists it; JOTC_ENV_FILE names another), then these
defaults:

  JOTC_HOST         address to listen on (else PUBLISH_ADDRESS)   127.0.0.1
  PORT              the API's port (else API_PORT)                4000
  LOCUST_WEB_PORT   Locust's web UI port (else LOCUST_PORT)       8089
  JOTC_ADMIN_TOKEN  bearer token of the admin API                 a fresh one per run
  DATABASE_URL      the application database                      see below
  REDIS_URL         rate limits and idempotency keys              see below

Without DATABASE_URL / REDIS_URL: the servers on 127.0.0.1's default ports (PostgreSQL's
database jotc, made on first use; Redis's database 0), which may be someone else's; where none
listens, or with --throwaway, throwaway ones from the local PostgreSQL and Redis binaries.

Every other variable of the API (docs/configuration.md) and of Locust (LOCUST_*) passes
through. One Ctrl-C stops everything it started and removes what it made.
"""
TARGETS = ("stack", "api", "retention")


def local_address(host: str) -> str:
    """Where a browser or curl on this machine reaches a server listening on host."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "*") else host  # noqa: S104 - recognising it, not binding


def _terminated(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def banner(api: str, locust: str | None, admin_token_from: str, database: str, throwaway: bool) -> str:
    env = os.environ
    lines = [
        "",
        "JOTC is running.",
        f"  API          {api}   (listening on {env['JOTC_HOST']}:{env['PORT']})",
        f"  docs         {api}/schema   (OpenAPI document: {api}/schema/openapi.json)",
        f"  try it       curl -s {api}/jumps -H 'content-type: application/json' \\",
        """                 -d '{"clouds": [0, 0, 1, 0, 0, 1, 0], "user": "ada@example.com"}'""",
    ]
    if env["JOTC_ADMIN_TOKEN"]:
        lines.append(f"  admin API    curl -s {api}/admin/stats -H 'Authorization: Bearer {env['JOTC_ADMIN_TOKEN']}'")
        lines.append(f"               token: {admin_token_from}")
    else:
        lines.append(f"  admin API    off: JOTC_ADMIN_TOKEN is empty ({admin_token_from})")
    if locust:
        lines.append(f"  Locust       {locust}   (load test UI, aimed at {api})")
    lines.append(f"  PostgreSQL   {database}")
    lines.append(f"  Redis        {env['REDIS_URL']}")
    if throwaway:
        lines.append("               both throwaway servers, removed when scripts/dev stops")
    if local_address(env["JOTC_HOST"]) != env["JOTC_HOST"]:
        lines.append("  warning      listening on every interface: anyone who can reach this machine can call it")
    lines.append("  stop         Ctrl-C stops everything scripts/dev started")
    return "\n".join([*lines, ""])


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/dev", usage=USAGE.splitlines()[0].removeprefix("usage: "), add_help=False
    )
    parser.add_argument("--throwaway", action="store_true")
    parser.add_argument("target", nargs="?", default="stack", choices=TARGETS)
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    if "-h" in argv or "--help" in argv:
        print(USAGE, end="")
        return 0
    args = parse(argv)
    target = args.target
    signal.signal(signal.SIGTERM, _terminated)

    env = os.environ
    admin_token_from = "JOTC_ADMIN_TOKEN in the environment"
    if "JOTC_ADMIN_TOKEN" not in env:
        admin_token_from = f"JOTC_ADMIN_TOKEN in {env.get('JOTC_ENV_FILE') or '.env'}"
    common.load_dotenv()
    common.use_uv()
    for service in ("db-migrations", "api", "loadtest"):
        if not common.sync(common.SERVICES / service):
            common.die(f"could not install services/{service}")

    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="jotc-dev.")))
        scratch.chmod(0o755)  # a throwaway PostgreSQL runs as postgres and keeps its data inside
        given_database = None if args.throwaway else env.get("DATABASE_URL")
        found = stack.enter_context(jotc_provision.servers(throwaway=args.throwaway, scratch=scratch))
        for line in found.said:
            say(line)
        env["REDIS_URL"] = found.redis_url
        if given_database:
            env["DATABASE_URL"] = given_database
        else:
            # A server, not a database: the application gets its own database on it.
            env["DATABASE_URL"] = jotc_provision.create_database(found.database_url, "jotc", exist_ok=True)
        database = jotc_provision.shown(env["DATABASE_URL"])

        say(f"migrating {database}")
        jotc_provision.migrate(env["DATABASE_URL"], common.venv_command("db-migrations", "jotc-migrate"), timeout=600)
        if target == "retention":
            return subprocess.run([common.venv_command("api", "jotc-retention")], check=False).returncode

        env.setdefault("JOTC_HOST", env.get("PUBLISH_ADDRESS") or "127.0.0.1")
        env.setdefault("PORT", env.get("API_PORT") or "4000")
        env.setdefault("LOG_FORMAT", "console")
        env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(scratch / "metrics"))
        if "JOTC_ADMIN_TOKEN" not in env:
            env["JOTC_ADMIN_TOKEN"] = secrets.token_urlsafe(24)
            admin_token_from = "generated for this run; set JOTC_ADMIN_TOKEN (or put it in .env) to choose one"
        api = f"http://{local_address(env['JOTC_HOST'])}:{env['PORT']}"

        started: list[jotc_provision.Server] = []
        stack.callback(lambda: [server.stop() for server in reversed(started)])
        api_server = jotc_provision.Server(jotc_provision.spawn([common.venv_command("api", "jotc-api")], env=env))
        started.append(api_server)
        locust = None
        if target == "stack":
            env.setdefault("LOCUST_WEB_PORT", env.get("LOCUST_PORT") or "8089")
            env.setdefault("LOCUST_WEB_HOST", env["JOTC_HOST"])
            (scratch / "locust").mkdir()
            locust_env = {**env, "LOCUST_ROLE": "ui", "JOTC_TARGET": api}
            locust_server = jotc_provision.Server(
                jotc_provision.spawn(
                    [common.venv_command("loadtest", "jotc-loadtest")], env=locust_env, cwd=scratch / "locust"
                )
            )
            started.append(locust_server)
            locust = f"http://{local_address(env['LOCUST_WEB_HOST'])}:{env['LOCUST_WEB_PORT']}"
        jotc_provision.wait_http(f"{api}/readyz", api_server.process, timeout=120)
        if locust:
            jotc_provision.wait_http(f"{locust}/", started[-1].process, timeout=60)
        print(banner(api, locust, admin_token_from, database, args.throwaway), flush=True)
        # Whichever stops first (or Ctrl-C) ends the session; the exit stops the rest.
        while all(server.process.poll() is None for server in started):
            time.sleep(0.2)
        return next(server.process.returncode for server in started if server.process.returncode is not None)


if __name__ == "__main__":
    common.run_script(main)
