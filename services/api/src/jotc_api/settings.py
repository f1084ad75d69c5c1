"""Settings: read from the environment once at start-up, validated, then passed around.

A bad value raises SettingsError with one line naming the variable; the server
prints it and exits before binding the port.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

MIB = 1024 * 1024
DEFAULT_MAX_CLOUDS = 100_000


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
class Settings:
    database_url: URL
    redis_url: str | None = None
    admin_token: str | None = None
    max_clouds: int = DEFAULT_MAX_CLOUDS
    max_body_bytes: int = longest_body(DEFAULT_MAX_CLOUDS)
    rate_limit: RateLimit | None = None
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    cors_origins: tuple[str, ...] = ()
    log_level: str = "INFO"
    log_format: str = "json"
    access_log: bool = False
    port: int = 4000
    host: str = "0.0.0.0"  # noqa: S104 - a container listens on all its interfaces
    workers: int | None = None
    db_pool_size: int = 4
    recorder_max_batch: int = 128
    recorder_writers: int = 1
    offload_from: int = 50_000
    drain_seconds: float = 5.0
    shutdown_timeout: float = 25.0
    header_read_timeout: float = 10.0
    max_header_bytes: int = 64 * 1024
    body_read_timeout: float = 10.0
    max_uploads: int | None = None  # None: half of backpressure
    upload_share_percent: int = 25
    body_min_rate: int = 4096
    request_memory: int | None = None  # None: memory.DEFAULT_REQUEST_MEMORY, or less if a worker has less
    worker_memory: int | None = None  # None: the container's memory limit divided among the workers
    redis_max_connections: int = 16
    admin_page_cells: int = 1_000_000
    erasure_chunk_rows: int = 1000
    erasure_busy_percent: int = 10
    version: str = field(default="")

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
PERIODS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
LOG_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}


def integer(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must be between {low} and {high}, got {value}")
    return value


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


def byte_size(env: Mapping[str, str], name: str, low: int, high: int) -> int | None:
    """Bytes, written as Kubernetes writes memory (case matters: M is 10**6, m would be milli):
    134217728, 128Mi, 1.5Gi, 500M; None when unset."""
    raw = env.get(name, "").strip()
    if not raw:
        return None
    match = re.fullmatch(r"([0-9]{1,15}(?:\.[0-9]{1,6})?)(Ki|Mi|Gi|Ti|k|M|G|T)?", raw)
    if not match:
        raise SettingsError(f"{name} must be a size in bytes such as 134217728, 128Mi or 1.5Gi, got {raw!r}")
    value = int(float(match[1]) * UNITS[match[2] or ""])
    if not low <= value <= high:
        raise SettingsError(f"{name} must be between {low // MIB}Mi and {high // MIB}Mi, got {raw!r}")
    return value


def boolean(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


def database_url(env: Mapping[str, str]) -> URL:
    raw = env.get("DATABASE_URL", "").strip()
    if not raw:
        raise SettingsError("DATABASE_URL is not set; expected postgresql://user:password@host:5432/db")
    try:
        url = make_url(raw)
    except ArgumentError:
        raise SettingsError(
            "DATABASE_URL is not a valid URL; expected postgresql://user:password@host:5432/db"
        ) from None
    if url.get_backend_name() not in {"postgresql", "postgres"}:
        raise SettingsError(f"DATABASE_URL must be a postgresql:// URL, got {url.drivername!r}")
    return url.set(drivername="postgresql+psycopg")


def redis_url(env: Mapping[str, str]) -> str | None:
    raw = env.get("REDIS_URL", "").strip()
    if raw and not re.match(r"^(redis|rediss|unix)://", raw):
        raise SettingsError("REDIS_URL must start with redis://, rediss:// or unix://")
    return raw or None


def rate_limit(env: Mapping[str, str]) -> RateLimit | None:
    raw = env.get("JOTC_RATE_LIMIT", "").strip()
    if not raw or raw == "0":
        return None
    match = re.fullmatch(r"(\d+)\s*/\s*(second|minute|hour|day)", raw)
    if not match or int(match[1]) < 1:
        raise SettingsError(f"JOTC_RATE_LIMIT must look like 600/minute (or 0 to turn it off), got {raw!r}")
    return RateLimit(int(match[1]), PERIODS[match[2]])


def trusted_proxies(
    env: Mapping[str, str],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    networks = []
    for item in env.get("JOTC_TRUSTED_PROXIES", "").replace(",", " ").split():
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise SettingsError(f"JOTC_TRUSTED_PROXIES has {item!r}, which is not an IP address or network") from None
    return tuple(networks)


def cors_origins(env: Mapping[str, str]) -> tuple[str, ...]:
    origins = tuple(env.get("JOTC_CORS_ORIGINS", "").replace(",", " ").split())
    for origin in origins:
        if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
            raise SettingsError(f"JOTC_CORS_ORIGINS has {origin!r}; expected origins like https://app.example.com")
    return origins


ADMIN_TOKEN_MIN_LENGTH = 32


def admin_token(env: Mapping[str, str]) -> str | None:
    """The admin API's bearer token, or None (blank: the admin API is off). Surrounding white space
    is dropped, as a file-mounted secret usually ends in a newline; what is left must be long
    enough not to be guessed and sendable in an Authorization header."""
    raw = env.get("JOTC_ADMIN_TOKEN", "").strip()
    if not raw:
        return None
    if not all("!" <= character <= "~" for character in raw):
        raise SettingsError("JOTC_ADMIN_TOKEN must be visible ASCII characters without spaces")
    if len(raw) < ADMIN_TOKEN_MIN_LENGTH:
        raise SettingsError(
            f"JOTC_ADMIN_TOKEN must be at least {ADMIN_TOKEN_MIN_LENGTH} characters, got {len(raw)}; "
            "make one with: openssl rand -hex 24"
        )
    return raw


def choice(env: Mapping[str, str], name: str, default: str, allowed: set[str]) -> str:
    raw = env.get(name, "").strip() or default
    normalised = raw.upper() if name == "LOG_LEVEL" else raw.lower()
    if normalised not in allowed:
        raise SettingsError(f"{name} must be one of {', '.join(sorted(allowed))}, got {raw!r}")
    return normalised


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Every setting from the environment; raises SettingsError naming the first bad variable."""
    from jotc_api import __version__

    env = os.environ if env is None else env
    workers_raw = env.get("JOTC_WORKERS", "").strip()
    max_clouds = integer(env, "JOTC_MAX_CLOUDS", DEFAULT["max_clouds"], 2, 10_000_000)
    return Settings(
        database_url=database_url(env),
        redis_url=redis_url(env),
        admin_token=admin_token(env),
        max_clouds=max_clouds,
        max_body_bytes=integer(env, "JOTC_MAX_BODY_BYTES", longest_body(max_clouds), 64, 256 * MIB),
        rate_limit=rate_limit(env),
        trusted_proxies=trusted_proxies(env),
        cors_origins=cors_origins(env),
        log_level=choice(env, "LOG_LEVEL", DEFAULT["log_level"], LOG_LEVELS),
        log_format=choice(env, "LOG_FORMAT", DEFAULT["log_format"], {"json", "console"}),
        # Off by default: the ingress logs every request already, and measured here the line per
        # request cost about 15% of POST /jumps' throughput. Answers of 500 and above are always logged.
        access_log=boolean(env, "JOTC_ACCESS_LOG", DEFAULT["access_log"]),
        port=integer(env, "PORT", DEFAULT["port"], 1, 65535),
        host=env.get("JOTC_HOST", "").strip() or DEFAULT["host"],
        workers=integer(env, "JOTC_WORKERS", 1, 1, 256) if workers_raw else None,
        db_pool_size=integer(env, "JOTC_DB_POOL_SIZE", DEFAULT["db_pool_size"], 1, 100),
        recorder_max_batch=integer(env, "JOTC_RECORDER_MAX_BATCH", DEFAULT["recorder_max_batch"], 1, 10_000),
        recorder_writers=integer(env, "JOTC_RECORDER_WRITERS", DEFAULT["recorder_writers"], 1, 32),
        offload_from=integer(env, "JOTC_SOLVER_OFFLOAD_FROM", DEFAULT["offload_from"], 2, 100_000_000),
        # 0 turns the drain off: SIGTERM then closes the listener at once, as Granian alone does.
        drain_seconds=float(integer(env, "JOTC_DRAIN_SECONDS", int(DEFAULT["drain_seconds"]), 0, 3600)),
        shutdown_timeout=float(integer(env, "JOTC_SHUTDOWN_TIMEOUT", int(DEFAULT["shutdown_timeout"]), 1, 3600)),
        header_read_timeout=float(
            integer(env, "JOTC_HEADER_READ_TIMEOUT", int(DEFAULT["header_read_timeout"]), 1, 300)
        ),
        max_header_bytes=integer(env, "JOTC_MAX_HEADER_BYTES", DEFAULT["max_header_bytes"], 8192, 1024 * 1024),
        body_read_timeout=float(integer(env, "JOTC_BODY_READ_TIMEOUT", int(DEFAULT["body_read_timeout"]), 1, 300)),
        max_uploads=integer(env, "JOTC_MAX_UPLOADS", 1, 1, 100_000)
        if env.get("JOTC_MAX_UPLOADS", "").strip()
        else None,
        upload_share_percent=integer(env, "JOTC_UPLOAD_SHARE_PERCENT", DEFAULT["upload_share_percent"], 1, 100),
        body_min_rate=integer(env, "JOTC_BODY_MIN_RATE", DEFAULT["body_min_rate"], 0, 100 * MIB),
        request_memory=byte_size(env, "JOTC_REQUEST_MEMORY", 64 * 1024, 64 * 1024 * MIB),
        worker_memory=byte_size(env, "JOTC_WORKER_MEMORY", 64 * MIB, 1024 * 1024 * MIB),
        redis_max_connections=integer(env, "JOTC_REDIS_MAX_CONNECTIONS", DEFAULT["redis_max_connections"], 2, 10_000),
        admin_page_cells=integer(env, "JOTC_ADMIN_PAGE_CELLS", DEFAULT["admin_page_cells"], 1000, 100_000_000),
        erasure_chunk_rows=integer(env, "JOTC_ERASURE_CHUNK_ROWS", DEFAULT["erasure_chunk_rows"], 10, 100_000),
        # The share of the time an erasure's runner deletes; it rests the remainder (erasure.py).
        erasure_busy_percent=integer(env, "JOTC_ERASURE_BUSY_PERCENT", DEFAULT["erasure_busy_percent"], 1, 100),
        version=__version__,
    )
