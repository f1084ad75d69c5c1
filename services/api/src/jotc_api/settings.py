"""Settings: read from the environment once at start-up, validated, then passed around.

A bad value raises SettingsError with one line naming the variable; the server
prints it and exits before binding the port.
"""

# ruff: noqa: RUF001, RUF009 - the docs' typography (dashes, signs), and each field declared by a call
from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

MIB = 1024 * 1024
DEFAULT_MAX_CLOUDS = 100_000
ADMIN_TOKEN_MIN_LENGTH = 32


def longest_body(max_clouds: int) -> int:
    """The default body limit: the largest valid input in its longest ordinary spelling, a JSON
    array with ", " between clouds (3 bytes a cloud, as Python's json.dumps writes it), plus room
    for the other fields (a 320-character user name written as \\u escapes is under 4 KiB)."""
    return 3 * max_clouds + 16 * 1024


class SettingsError(ValueError):
    """One environment variable has a value the service cannot run with."""


@dataclass(frozen=True, slots=True)
class RateLimit:
    requests: int
    per_seconds: int


@dataclass(frozen=True, slots=True)
class Setting:
    """One environment variable: what it sets, as docs/configuration.md states it (``meaning``,
    ``shown``: the default, when it is worked out rather than a value; ``accepted``), and how its
    text is read (``read(name, text)``, text stripped and not blank; raises SettingsError)."""

    env: str
    meaning: str
    accepted: str
    read: Callable[[str, str], Any]
    shown: str | None = None


def setting(
    value: Any, env: str, meaning: str, accepted: str, read: Callable[[str, str], Any], shown: str | None = None
) -> Any:
    """A field of Settings whose default is ``value``, read from ``env``: its one declaration.
    ``shown``: the default as the docs state it, when it is worked out rather than ``value``."""
    return field(default=value, metadata={"setting": Setting(env, meaning, accepted, read, shown)})


def whole(low: int, high: int) -> Callable[[str, str], int]:
    def read(name: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
        if not low <= value <= high:
            raise SettingsError(f"{name} must be between {low} and {high}, got {value}")
        return value

    return read


def seconds(low: int, high: int) -> Callable[[str, str], float]:
    read_whole = whole(low, high)
    return lambda name, raw: float(read_whole(name, raw))


def size(low: int, high: int) -> Callable[[str, str], int]:
    return lambda name, raw: byte_size(name, raw, low, high)


def one_of(*allowed: str, upper: bool = False) -> Callable[[str, str], str]:
    def read(name: str, raw: str) -> str:
        normalised = raw.upper() if upper else raw.lower()
        if normalised not in allowed:
            raise SettingsError(f"{name} must be one of {', '.join(sorted(allowed))}, got {raw!r}")
        return normalised

    return read


def thousands(number: int) -> str:
    return f"{number:,}"


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: URL = setting(
        None,
        "DATABASE_URL",
        "PostgreSQL, `postgresql://user:password@host:5432/db`",
        "`postgresql://` or `postgres://`",
        lambda _, raw: database_url_of(raw),
        shown="required",
    )
    redis_url: str | None = setting(
        None,
        "REDIS_URL",
        "Redis for cluster-wide rate limits and idempotency keys",
        "`redis://`, `rediss://`, `unix://`",
        lambda _, raw: redis_url_of(raw),
        shown="unset (no Redis)",
    )
    redis_sentinels: tuple[tuple[str, int], ...] = setting(
        (),
        "REDIS_SENTINELS",
        "Redis Sentinel addresses, `host:port` separated by commas; when set, the master is found through "
        "them (REDIS_SENTINEL_SERVICE names it) and REDIS_URL gives only the user, password, database and TLS, "
        "if any",
        "`host:port`, …; IPv6 as `[::1]:26379`",
        lambda _, raw: sentinels_of(raw),
        shown="unset (REDIS_URL alone)",
    )
    redis_sentinel_service: str = setting(
        "mymaster",
        "REDIS_SENTINEL_SERVICE",
        "the master's name as the sentinels know it",
        "letters, digits, `.`, `_`, `-`",
        lambda name, raw: service_name_of(name, raw),
    )
    readiness_database_url: URL | None = setting(
        None,
        "JOTC_READINESS_DATABASE_URL",
        "PostgreSQL for /readyz's own connection; behind a transaction-mode pooler, a database entry of "
        "the pooler with a small pool of its own, so a saturated pool cannot turn every pod unready at once",
        "as DATABASE_URL",
        lambda name, raw: database_url_of(raw, name),
        shown="DATABASE_URL",
    )
    db_pooler: str = setting(
        "none",
        "JOTC_DB_POOLER",
        "what DATABASE_URL leads to: PostgreSQL itself or a session-mode pooler (`none`), or a "
        "transaction-mode pooler such as PgBouncer (`transaction`: no server-side prepared statements, no "
        "session state)",
        "`none`, `transaction`",
        one_of("none", "transaction"),
    )
    admin_token: str | None = setting(
        None,
        "JOTC_ADMIN_TOKEN",
        "bearer token of the admin API; surrounding white space (a file-mounted secret's newline) is dropped",
        f"at least {ADMIN_TOKEN_MIN_LENGTH} visible ASCII characters (`openssl rand -hex 24`); "
        "blank turns the admin API off",
        lambda name, raw: token_of(name, raw),
        shown="unset (admin API off)",
    )
    max_clouds: int = setting(
        DEFAULT_MAX_CLOUDS, "JOTC_MAX_CLOUDS", "largest accepted `n`", "2 – 10,000,000", whole(2, 10_000_000)
    )
    max_body_bytes: int = setting(
        longest_body(DEFAULT_MAX_CLOUDS),
        "JOTC_MAX_BODY_BYTES",
        "largest accepted body",
        "64 – 268,435,456",
        whole(64, 256 * MIB),
        shown=f"3 × `JOTC_MAX_CLOUDS` + 16,384 ({thousands(longest_body(DEFAULT_MAX_CLOUDS))}): "
        "the largest input as a JSON array written `[0, 0, …]`",
    )
    rate_limit: RateLimit | None = setting(
        None,
        "JOTC_RATE_LIMIT",
        "requests per client address, `<count>/<second\\|minute\\|hour\\|day>`",
        "count ≥ 1",
        lambda _, raw: rate_limit_of(raw),
        shown="off (`0` or unset)",
    )
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = setting(
        (),
        "JOTC_TRUSTED_PROXIES",
        "addresses or networks, space- or comma-separated, whose `X-Forwarded-For` is believed",
        "IPv4/IPv6 addresses or CIDRs",
        lambda _, raw: trusted_proxies_of(raw),
        shown="none",
    )
    loadtest_token: str | None = setting(
        None,
        "JOTC_LOADTEST_TOKEN",
        "token of the in-cluster load test (the Helm chart's Locust swarm): a request whose `JOTC-Loadtest-Token` "
        "header carries it is counted by the rate limit and the per-client upload share as the simulated client "
        "its `JOTC-Loadtest-Client` header names (1 – 64 letters, digits, `.`, `_`, `-`), not by its address; "
        "a request with a wrong token, or without a name, is counted by its address like any other. A worker "
        "tracks at most 10,000 simulated clients: a new name while every tracked one sent within the last 120 s "
        "is counted by its address, so the token cannot make up clients without bound",
        f"at least {ADMIN_TOKEN_MIN_LENGTH} visible ASCII characters (`openssl rand -hex 24`), not the admin token",
        lambda name, raw: token_of(name, raw),
        shown="unset (every request counted by its address)",
    )
    cors_origins: tuple[str, ...] = setting(
        (),
        "JOTC_CORS_ORIGINS",
        "allowed CORS origins, space- or comma-separated",
        "`https://host[:port]`, `http://…`, or `*`",
        lambda _, raw: cors_origins_of(raw),
        shown="none (CORS off)",
    )
    log_level: str = setting(
        "INFO",
        "LOG_LEVEL",
        "log level",
        "`DEBUG`, `INFO`, `WARNING`, `ERROR`, `CRITICAL`",
        one_of("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", upper=True),
    )
    log_format: str = setting(
        "json",
        "LOG_FORMAT",
        "log lines as JSON (containers) or for people (local); either way no control character is written raw "
        "(a request's path is percent-decoded: `%1B` is an escape): JSON escapes them as JSON does (`\\u001b`), "
        "console as Python does (`\\x1b`)",
        "`json`, `console`",
        one_of("json", "console"),
    )
    # Off by default: the ingress logs every request already, and a line per request costs a
    # measurable share of POST /jumps' throughput (docs/performance.md).
    access_log: bool = setting(
        False,
        "JOTC_ACCESS_LOG",
        "one log line per request; answers ≥ 500 are logged regardless",
        "`true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`",
        lambda name, raw: boolean_of(name, raw),
    )
    port: int = setting(4000, "PORT", "port to listen on", "1 – 65535", whole(1, 65535))
    host: str = setting(
        "0.0.0.0",  # noqa: S104 - a container listens on all its interfaces
        "JOTC_HOST",
        "address to listen on",
        "an address",
        lambda _, raw: raw,
    )
    workers: int | None = setting(
        None,
        "JOTC_WORKERS",
        "Granian worker processes",
        "1 – 256",
        whole(1, 256),
        shown="the CPUs of the container's cgroup quota, rounded down (at least 1), "
        "capped by the CPUs the process may run on",
    )
    db_pool_size: int = setting(4, "JOTC_DB_POOL_SIZE", "PostgreSQL connections per worker", "1 – 100", whole(1, 100))
    recorder_max_batch: int = setting(
        128, "JOTC_RECORDER_MAX_BATCH", "most rows written in one recorder transaction", "1 – 10,000", whole(1, 10_000)
    )
    recorder_writers: int = setting(
        1,
        "JOTC_RECORDER_WRITERS",
        "recorder writer tasks per worker, each holding one pooled connection",
        "1 – 32",
        whole(1, 32),
    )
    offload_from: int = setting(
        50_000,
        "JOTC_SOLVER_OFFLOAD_FROM",
        "inputs with at least this many clouds are solved on a worker thread",
        "2 – 100,000,000",
        whole(2, 100_000_000),
    )
    drain_seconds: float = setting(
        5.0,
        "JOTC_DRAIN_SECONDS",
        "seconds the server keeps serving after SIGTERM with `/readyz` 503 and `Connection: close`, before it "
        "stops accepting; at least a balancer's check interval × failures, plus propagation. A second SIGTERM "
        "(or SIGINT) skips the rest; 0: no drain",
        "0 – 3600",
        seconds(0, 3600),
    )
    shutdown_timeout: float = setting(
        25.0,
        "JOTC_SHUTDOWN_TIMEOUT",
        "seconds, after the drain, to finish in-flight requests and the recorder's queue; Granian kills "
        "workers 2 s later",
        "1 – 3600",
        seconds(1, 3600),
    )
    header_read_timeout: float = setting(
        10.0,
        "JOTC_HEADER_READ_TIMEOUT",
        "seconds a client has to send its request headers",
        "1 – 300",
        seconds(1, 300),
    )
    max_header_bytes: int = setting(
        64 * 1024,
        "JOTC_MAX_HEADER_BYTES",
        "request header buffer; larger headers are refused",
        "8192 – 1,048,576",
        whole(8192, 1024 * 1024),
    )
    body_read_timeout: float = setting(
        10.0,
        "JOTC_BODY_READ_TIMEOUT",
        "seconds a client has, after its headers, to send the whole body (else 408, connection closed)",
        "1 – 300",
        seconds(1, 300),
    )
    max_uploads: int | None = setting(
        None,
        "JOTC_MAX_UPLOADS",
        "bodies received at once per worker (more get 503 `overloaded` at once)",
        "1 – 100,000",
        whole(1, 100_000),
        shown="half of `JOTC_RECORDER_MAX_BATCH` × `JOTC_DB_POOL_SIZE`",
    )
    upload_share_percent: int = setting(
        25,
        "JOTC_UPLOAD_SHARE_PERCENT",
        "the share of a worker's upload slots, and of its request memory, one client may hold (a client as "
        "rate limiting counts it: an IPv4 address, an IPv6 /64, behind `JOTC_TRUSTED_PROXIES` the forwarded "
        "address)",
        "1 – 100",
        whole(1, 100),
    )
    body_min_rate: int = setting(
        4096,
        "JOTC_BODY_MIN_RATE",
        "bytes a second a body must keep up on average after its first 3 seconds, with no pause over 3 s "
        "(else 408, connection closed); 0: neither rule",
        "0 – 104,857,600",
        whole(0, 100 * MIB),
    )
    request_memory: int | None = setting(
        None,
        "JOTC_REQUEST_MEMORY",
        "memory the requests in flight in one worker may hold (bodies, parsed inputs, answers); sizes as "
        "Kubernetes writes them (`128Mi`, `1Gi`, bytes)",
        "64Ki – 64Gi; must hold one request of the largest body",
        size(64 * 1024, 64 * 1024 * MIB),
        shown="`128Mi`, or what the worker's memory leaves after its own 160Mi when that is less",
    )
    worker_memory: int | None = setting(
        None,
        "JOTC_WORKER_MEMORY",
        "memory each worker is given, for the start-up check",
        "64Mi – 1024Gi, with `Ki`, `Mi`, `Gi`, `Ti`, `k`, `M`, `G`, `T` or none (bytes); decimals allowed",
        size(64 * MIB, 1024 * 1024 * MIB),
        shown="(the container's memory limit (cgroup) − 64Mi) ÷ workers; unset without a limit",
    )
    redis_max_connections: int = setting(
        16,
        "JOTC_REDIS_MAX_CONNECTIONS",
        "Redis connections per worker; a caller past them waits up to 0.25 s, then is served as if Redis were down",
        "2 – 10,000",
        whole(2, 10_000),
    )
    admin_page_cells: int = setting(
        1_000_000,
        "JOTC_ADMIN_PAGE_CELLS",
        "clouds in all an admin listing page may carry past its first row",
        "1,000 – 100,000,000",
        whole(1000, 100_000_000),
    )
    erasure_chunk_rows: int = setting(
        1000,
        "JOTC_ERASURE_CHUNK_ROWS",
        "a user's requests deleted per erasure transaction; each chunk also settles the user's statistics",
        "10 – 100,000",
        whole(10, 100_000),
    )
    erasure_busy_percent: int = setting(
        10,
        "JOTC_ERASURE_BUSY_PERCENT",
        "the share of the time an erasure works: after each chunk it rests so that it deletes at most this "
        "share of the time, leaving the database to other writers (100: flat out)",
        "1 – 100",
        whole(1, 100),
    )
    version: str = ""

    @property
    def backpressure(self) -> int:
        """Requests in flight per worker: every one may be waiting for the recorder, whose
        writers commit up to max_batch rows per pooled connection."""
        return self.recorder_max_batch * self.db_pool_size

    @property
    def upload_slots(self) -> int:
        """Bodies being received at once per worker. Below backpressure, so clients that trickle
        their bodies can never take every slot: probes and quick requests always find room."""
        return self.max_uploads if self.max_uploads is not None else max(1, self.backpressure // 2)

    @property
    def uploads_per_client(self) -> int:
        """Upload slots one client (clients.py: an address, an IPv6 /64) may hold at once."""
        return max(1, self.upload_slots * self.upload_share_percent // 100)


# Each default is written once, on the dataclass above; the loader below reads it from there.
DEFAULT: dict[str, Any] = {item.name: item.default for item in fields(Settings)}
SETTINGS: dict[str, Setting] = {item.name: item.metadata["setting"] for item in fields(Settings) if item.metadata}
PERIODS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


def integer(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    """A whole number from ``env[name]``, ``default`` when unset or blank (jotc-retention's reader)."""
    raw = env.get(name, "").strip()
    return whole(low, high)(name, raw) if raw else default


UNITS = {
    "": 1,
    "k": 1000,
    "Ki": 1024,
    "M": 1000**2,
    "Mi": MIB,
    "G": 1000**3,
    "Gi": 1024 * MIB,
    "T": 1000**4,
    "Ti": MIB * MIB,
}


def byte_size(name: str, raw: str, low: int, high: int) -> int:
    """Bytes, written as Kubernetes writes memory (case matters: M is 10**6, m would be milli):
    134217728, 128Mi, 1.5Gi, 500M."""
    match = re.fullmatch(r"([0-9]{1,15}(?:\.[0-9]{1,6})?)(Ki|Mi|Gi|Ti|k|M|G|T)?", raw)
    if not match:
        raise SettingsError(f"{name} must be a size in bytes such as 134217728, 128Mi or 1.5Gi, got {raw!r}")
    value = int(float(match[1]) * UNITS[match[2] or ""])
    if not low <= value <= high:
        raise SettingsError(f"{name} must be between {low // MIB}Mi and {high // MIB}Mi, got {raw!r}")
    return value


def boolean_of(name: str, raw: str) -> bool:
    if raw.lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.lower() in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name} must be true or false, got {raw.lower()!r}")


def database_url(env: Mapping[str, str]) -> URL:
    """DATABASE_URL, required (jotc-retention's reader too)."""
    raw = env.get("DATABASE_URL", "").strip()
    if not raw:
        raise SettingsError("DATABASE_URL is not set; expected postgresql://user:password@host:5432/db")
    return database_url_of(raw)


def database_url_of(raw: str, name: str = "DATABASE_URL") -> URL:
    try:
        url = make_url(raw)
    except ArgumentError:
        raise SettingsError(f"{name} is not a valid URL; expected postgresql://user:password@host:5432/db") from None
    if url.get_backend_name() not in {"postgresql", "postgres"}:
        raise SettingsError(f"{name} must be a postgresql:// URL, got {url.drivername!r}")
    return url.set(drivername="postgresql+psycopg")


def redis_url_of(raw: str) -> str:
    if not re.match(r"^(redis|rediss|unix)://", raw):
        raise SettingsError("REDIS_URL must start with redis://, rediss:// or unix://")
    return raw


def sentinels_of(raw: str) -> tuple[tuple[str, int], ...]:
    addresses = []
    for item in raw.replace(" ", ",").split(","):
        if not item:
            continue
        match = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})", item)
        if not match or not 1 <= int(match[2]) <= 65535:
            raise SettingsError(f"REDIS_SENTINELS has {item!r}; expected host:port, such as sentinel-0:26379")
        addresses.append((match[1].strip("[]"), int(match[2])))
    if not addresses:
        raise SettingsError("REDIS_SENTINELS has no address; expected host:port, such as sentinel-0:26379")
    return tuple(addresses)


def service_name_of(name: str, raw: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", raw):
        raise SettingsError(f"{name} must be 1 to 64 letters, digits, '.', '_' or '-', got {raw!r}")
    return raw


def rate_limit_of(raw: str) -> RateLimit | None:
    if raw == "0":
        return None
    match = re.fullmatch(r"(\d+)\s*/\s*(second|minute|hour|day)", raw)
    if not match or int(match[1]) < 1:
        raise SettingsError(f"JOTC_RATE_LIMIT must look like 600/minute (or 0 to turn it off), got {raw!r}")
    return RateLimit(int(match[1]), PERIODS[match[2]])


def trusted_proxies_of(raw: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    networks = []
    for item in raw.replace(",", " ").split():
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise SettingsError(f"JOTC_TRUSTED_PROXIES has {item!r}, which is not an IP address or network") from None
    return tuple(networks)


def cors_origins_of(raw: str) -> tuple[str, ...]:
    origins = tuple(raw.replace(",", " ").split())
    for origin in origins:
        if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
            raise SettingsError(f"JOTC_CORS_ORIGINS has {origin!r}; expected origins like https://app.example.com")
    return origins


def token_of(name: str, raw: str) -> str:
    """A token: the admin API's bearer token, or the load test's. Surrounding white space is dropped
    (as every setting's), as a file-mounted secret usually ends in a newline; what is left must be
    long enough not to be guessed and sendable in a header."""
    if not all("!" <= character <= "~" for character in raw):
        raise SettingsError(f"{name} must be visible ASCII characters without spaces")
    if len(raw) < ADMIN_TOKEN_MIN_LENGTH:
        raise SettingsError(
            f"{name} must be at least {ADMIN_TOKEN_MIN_LENGTH} characters, got {len(raw)}; "
            "make one with: openssl rand -hex 24"
        )
    return raw


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Every setting from the environment; raises SettingsError naming the first bad variable."""
    from jotc_api import __version__

    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for name, declared in SETTINGS.items():
        raw = env.get(declared.env, "").strip()
        if raw:  # blank is unset: the default
            values[name] = declared.read(declared.env, raw)
    values["database_url"] = database_url(env)
    if values.get("redis_sentinels") and str(values.get("redis_url", "")).startswith("unix://"):
        raise SettingsError(
            "REDIS_URL is a unix:// socket, but REDIS_SENTINELS finds the master over TCP: give REDIS_URL as "
            "redis:// (only its user, password, database and TLS are used) or leave it unset"
        )
    if values.get("loadtest_token") and values.get("loadtest_token") == values.get("admin_token"):
        raise SettingsError(
            "JOTC_LOADTEST_TOKEN is the admin token: every load-test pod would hold the admin API's key; "
            "give it a token of its own, e.g. openssl rand -hex 24"
        )
    if "max_body_bytes" not in values:
        values["max_body_bytes"] = longest_body(values.get("max_clouds", DEFAULT_MAX_CLOUDS))
    return Settings(**values, version=__version__)


def markdown_table() -> str:
    """docs/configuration.md's table of settings, from their declarations (``python -m jotc_api.settings``)."""
    lines = ["| variable | meaning | default | accepted |", "|---|---|---|---|"]
    for name, declared in SETTINGS.items():
        default = declared.shown if declared.shown is not None else f"`{DEFAULT[name]}`"
        lines.append(f"| `{declared.env}` | {declared.meaning} | {default} | {declared.accepted} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
