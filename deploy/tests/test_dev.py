"""scripts/dev end to end: the stack without Docker comes up from .env on 127.0.0.1, answers, says how
to use it, and leaves nothing behind; with --throwaway, on servers of its own whatever else runs."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import tempfile
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from jotc_provision import ProvisionError, free_port, fresh_database, wait_http, wait_until
from support import ROOT

SERVER = os.environ.get("DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"
# What scripts/dev reads from the environment before .env: unset, so the test's .env decides.
DEV_SETTINGS = {"JOTC_HOST", "PUBLISH_ADDRESS", "PORT", "API_PORT", "LOCUST_WEB_PORT", "LOCUST_PORT", "LOCUST_WEB_HOST"}
DEV_SETTINGS |= {"JOTC_ADMIN_TOKEN", "JOTC_ENV_FILE", "PROMETHEUS_MULTIPROC_DIR"}


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_for(process: subprocess.Popen[bytes], log: Path, url: str, failure: str, timeout: float = 120) -> None:
    """Wait until url answers 200; fail early, with its output, if scripts/dev exits."""
    try:
        wait_http(url, process, timeout=timeout, log=log)
    except ProvisionError as error:
        raise AssertionError(f"{failure}: {error}") from None


def wait_for_banner(process: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> str:
    """What scripts/dev prints once everything answers: from "JOTC is running." on."""

    def banner() -> str | None:
        assert process.poll() is None, log.read_text()
        said = log.read_text().partition("JOTC is running.")[2]
        return said if "Ctrl-C" in said else None

    return wait_until(banner, timeout=timeout, what="scripts/dev's banner")


def listening_addresses(port: int) -> set[str]:
    """The IPv4 addresses something listens on at this TCP port (Linux: /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, local_port = local.split(":")
        if state == "0A" and int(local_port, 16) == port:
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


@contextmanager
def scripts_dev(*args: str, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """scripts/dev ARGS running in a session of its own; afterwards Ctrl-C, as a terminal sends it, and
    every process it started must be gone."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(ROOT / "scripts/dev"), *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pgid = process.pid
    try:
        yield process
    finally:
        os.killpg(pgid, signal.SIGINT)  # what Ctrl-C in a terminal does
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            raise
    try:
        wait_until(lambda: not group_alive(pgid), timeout=10, what="scripts/dev's processes gone")
    except TimeoutError:
        raise AssertionError("scripts/dev left processes behind") from None


def dev_environment(dotenv: Path, scratch: Path, **settings: str) -> dict[str, str]:
    """This environment less what scripts/dev reads before .env (so the test's .env decides)."""
    return {
        **{name: value for name, value in os.environ.items() if name not in DEV_SETTINGS},
        "JOTC_ENV_FILE": str(dotenv),
        "JOTC_WORKERS": "2",
        "TMPDIR": str(scratch),
        **settings,
    }


def assert_closed(*ports: int) -> None:
    for port in ports:
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open"


def assert_nothing_left_in(scratch: Path) -> None:
    # uv keeps a lock file per interpreter in the temp directory, by design, and reuses it.
    left = [path.name for path in scratch.iterdir() if not re.fullmatch(r"uv-[0-9a-f]+\.lock", path.name)]
    assert left == [], "scripts/dev left files in its TMPDIR"


def test_scripts_dev_runs_the_stack_from_env_on_loopback_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    api_port, locust_port = free_port(), free_port()
    # .env as a newcomer would copy it from .env.example: it moves the ports and sets the token,
    # but a variable the environment sets (JOTC_MAX_CLOUDS) wins over it.
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        f"API_PORT={api_port}\nLOCUST_PORT={locust_port}  # the web UI\n"
        'JOTC_ADMIN_TOKEN="token-from-dotenv-of-32-characters-or-more"\nJOTC_MAX_CLOUDS=5\n'  # pragma: allowlist secret
    )
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    log = tmp_path / "dev.log"
    with fresh_database(SERVER) as database_url:
        env = dev_environment(dotenv, scratch, DATABASE_URL=database_url, JOTC_MAX_CLOUDS="100")
        with scripts_dev(env=env, log=log) as process:
            base = f"http://127.0.0.1:{api_port}"
            wait_for(process, log, f"{base}/readyz", "scripts/dev did not become ready")
            created = httpx.post(f"{base}/jumps", json={"clouds": [0, 0, 1, 0, 0, 1, 0], "user": "dev"})
            assert created.status_code == 201, created.text
            record = httpx.get(f"{base}/jumps/{created.json()['id']}").json()
            assert (record["jumps"], record["clouds"], record["user"]) == (4, [0, 0, 1, 0, 0, 1, 0], "dev")
            stats = httpx.get(
                f"{base}/admin/stats", headers={"Authorization": "Bearer token-from-dotenv-of-32-characters-or-more"}
            )
            assert stats.status_code == 200, stats.text
            wait_for(process, log, f"http://127.0.0.1:{locust_port}/", "Locust's UI did not come up")
            assert listening_addresses(api_port) == {"127.0.0.1"}
            assert listening_addresses(locust_port) == {"127.0.0.1"}
            banner = wait_for_banner(process, log)
            for expected in (
                f"{base}/schema",
                f"curl -s {base}/jumps",
                f"curl -s {base}/admin/stats -H 'Authorization: Bearer token-from-dotenv-of-32-characters-or-more'",
                f"JOTC_ADMIN_TOKEN in {dotenv}",
                f"http://127.0.0.1:{locust_port}",
                "Ctrl-C",
            ):
                assert expected in banner, banner
        assert_closed(api_port, locust_port)
        assert_nothing_left_in(scratch)


def banner_url(banner: str, service: str) -> urllib.parse.SplitResult:
    line = next(line for line in banner.splitlines() if line.strip().startswith(service))
    return urllib.parse.urlsplit(line.split()[1])


def test_throwaway_servers_are_used_whatever_is_configured_or_listening(tmp_path: Path) -> None:
    """--throwaway: neither the URLs the environment names (here nothing answers at them, so using
    one would fail) nor the servers on 5432 / 6379 (someone else's, perhaps) are touched."""
    api_port = free_port()
    dotenv = tmp_path / ".env"
    dotenv.write_text(f"API_PORT={api_port}\n")
    log = tmp_path / "dev.log"
    # The throwaway PostgreSQL runs as postgres when this runs as root: its data directory, in the
    # TMPDIR scripts/dev is given, must be reachable by that user (pytest's tmp_path is not).
    with tempfile.TemporaryDirectory(prefix="jotc-dev-throwaway.") as made:
        scratch = Path(made)
        scratch.chmod(0o755)
        env = dev_environment(
            dotenv,
            scratch,
            DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/jotc",
            REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
        )
        with scripts_dev("--throwaway", "api", env=env, log=log) as process:
            base = f"http://127.0.0.1:{api_port}"
            wait_for(process, log, f"{base}/readyz", "scripts/dev --throwaway did not become ready")
            created = httpx.post(f"{base}/jumps", json={"clouds": [0, 0, 1, 0, 0, 1, 0], "user": "throwaway"})
            assert created.status_code == 201, created.text
            banner = wait_for_banner(process, log)
            postgres, redis = banner_url(banner, "PostgreSQL"), banner_url(banner, "Redis")
            configured = {urllib.parse.urlsplit(env[name]).port for name in ("DATABASE_URL", "REDIS_URL")}
            assert {postgres.port, redis.port}.isdisjoint({5432, 6379, *configured}), banner
            assert postgres.path == "/jotc", banner
            assert "throwaway" in banner, banner
        assert postgres.port is not None
        assert redis.port is not None
        assert_closed(api_port, postgres.port, redis.port)
        assert_nothing_left_in(scratch)
