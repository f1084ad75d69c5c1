"""Start-up: a bad setting stops jotc-api with one line naming the variable; worker sizing. In
process: jotc-api's main() with the server itself replaced (tests/system/test_start_up.py runs the
command once)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from jotc_api import server
from jotc_api.settings import SETTINGS, Settings, SettingsError, load_settings, markdown_table

GOOD = {"DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/jotc"}


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DATABASE_URL", ""),
        ("DATABASE_URL", "mysql://root@localhost/jotc"),
        ("DATABASE_URL", "::not a url::"),
        ("REDIS_URL", "localhost:6379"),
        ("JOTC_MAX_CLOUDS", "many"),
        ("JOTC_MAX_CLOUDS", "1"),
        ("JOTC_MAX_BODY_BYTES", "-5"),
        ("JOTC_RATE_LIMIT", "lots"),
        ("JOTC_RATE_LIMIT", "10/fortnight"),
        ("JOTC_TRUSTED_PROXIES", "10.0.0.0/8 not-an-ip"),
        ("JOTC_CORS_ORIGINS", "example.com"),
        ("LOG_LEVEL", "LOUD"),
        ("LOG_FORMAT", "xml"),
        ("PORT", "70000"),
        ("PORT", "http"),
        ("JOTC_WORKERS", "0"),
        ("JOTC_ACCESS_LOG", "maybe"),
        ("JOTC_DB_POOL_SIZE", "0"),
        ("JOTC_SHUTDOWN_TIMEOUT", "forever"),
        ("JOTC_HEADER_READ_TIMEOUT", "0"),
        ("JOTC_MAX_HEADER_BYTES", "100"),
        ("JOTC_ERASURE_CHUNK_ROWS", "0"),
        ("JOTC_ERASURE_BUSY_PERCENT", "0"),
        ("JOTC_ERASURE_BUSY_PERCENT", "150"),
        ("JOTC_DB_POOLER", "pgbouncer"),
        ("JOTC_READINESS_DATABASE_URL", "mysql://root@localhost/jotc"),
        ("REDIS_SENTINELS", "sentinel-0"),
        ("REDIS_SENTINELS", "sentinel-0:26379,sentinel-1:99999"),
        ("REDIS_SENTINELS", ","),
        ("REDIS_SENTINEL_SERVICE", "my master"),
    ],
)
def test_bad_setting_stops_start_up_with_one_line_naming_it(
    variable: str, value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    started: list[Settings] = []
    monkeypatch.setattr(server, "run", started.append)
    for name, setting in {**GOOD, "PORT": "4999", variable: value}.items():
        monkeypatch.setenv(name, setting)
    with pytest.raises(SystemExit) as exited:
        server.main()
    assert exited.value.code == 2, f"{variable}={value!r} did not stop start-up with status 2"
    assert started == [], "the server was started despite the bad setting"
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {lines}"
    assert lines[0].startswith("jotc-api: ")
    assert variable in lines[0], f"the line does not name {variable}: {lines[0]}"


def test_good_settings_start_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[Settings] = []
    monkeypatch.setattr(server, "run", started.append)
    for name, setting in {**GOOD, "PORT": "4999"}.items():
        monkeypatch.setenv(name, setting)
    server.main()
    assert [settings.port for settings in started] == [4999]


def test_missing_database_url_is_named() -> None:
    with pytest.raises(SettingsError, match="DATABASE_URL is not set"):
        load_settings({})


def test_good_settings_are_parsed() -> None:
    settings = load_settings(
        {
            **GOOD,
            "JOTC_RATE_LIMIT": "600/minute",
            "JOTC_TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1",
            "JOTC_CORS_ORIGINS": "https://app.example.com",
            "LOG_LEVEL": "debug",
            "JOTC_ADMIN_TOKEN": "  ",
            "JOTC_ERASURE_CHUNK_ROWS": "500",
            "JOTC_ERASURE_BUSY_PERCENT": "100",
        }
    )
    assert (settings.erasure_chunk_rows, settings.erasure_busy_percent) == (500, 100)
    assert settings.database_url.drivername == "postgresql+psycopg"
    assert settings.rate_limit is not None
    assert (settings.rate_limit.requests, settings.rate_limit.per_seconds) == (600, 60)
    assert len(settings.trusted_proxies) == 2
    assert settings.log_level == "DEBUG"
    assert settings.admin_token is None  # blank means not configured: every admin request is 401
    assert load_settings({**GOOD, "JOTC_RATE_LIMIT": "0"}).rate_limit is None


def test_a_unix_socket_with_sentinels_is_refused_naming_both() -> None:
    with pytest.raises(SettingsError, match="REDIS_URL is a unix:// socket, but REDIS_SENTINELS"):
        load_settings({**GOOD, "REDIS_URL": "unix:///run/redis.sock", "REDIS_SENTINELS": "sentinel-0:26379"})


def test_the_pooler_and_the_sentinels_are_parsed() -> None:
    defaults = load_settings(GOOD)
    assert (defaults.db_pooler, defaults.redis_sentinels, defaults.redis_sentinel_service) == ("none", (), "mymaster")
    settings = load_settings(
        {
            **GOOD,
            "JOTC_DB_POOLER": "Transaction",
            "JOTC_READINESS_DATABASE_URL": "postgresql://jotc@pooler:6432/jotc_readiness",
            "REDIS_SENTINELS": "sentinel-0:26379, 10.0.0.7:26380,[::1]:26381",
            "REDIS_SENTINEL_SERVICE": "jotc-redis",
        }
    )
    assert settings.db_pooler == "transaction"
    assert settings.readiness_database_url is not None
    assert settings.readiness_database_url.database == "jotc_readiness"
    assert defaults.readiness_database_url is None, "unset: /readyz uses DATABASE_URL"
    assert settings.redis_sentinels == (("sentinel-0", 26379), ("10.0.0.7", 26380), ("::1", 26381))
    assert settings.redis_sentinel_service == "jotc-redis"


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [("max 100000", None), ("150000 100000", 1.5), ("50000 100000", 0.5), ("garbage", None)],
)
def test_cgroup_v2_quota(tmp_path: Path, cpu_max: str, expected: float | None) -> None:
    path = tmp_path / "cpu.max"
    path.write_text(cpu_max + "\n")
    if expected is None:
        assert server.cpu_quota(path) in (None, server.cpu_quota(tmp_path / "missing"))
    else:
        assert server.cpu_quota(path) == expected


def test_workers_follow_the_quota_rounded_down(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "cpu_quota", lambda: 1.5)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1, 2, 3, 4, 5, 6, 7})
    assert server.available_cpus() == 1
    monkeypatch.setattr(server, "cpu_quota", lambda: 2.5)
    assert server.available_cpus() == 2
    monkeypatch.setattr(server, "cpu_quota", lambda: 0.25)
    assert server.available_cpus() == 1
    monkeypatch.setattr(server, "cpu_quota", lambda: None)
    assert server.available_cpus() == 8


def test_the_admin_token_is_stripped_of_a_secret_files_newline() -> None:
    token = "a" * 32
    assert load_settings({**GOOD, "JOTC_ADMIN_TOKEN": f"{token}\n"}).admin_token == token


@pytest.mark.parametrize(
    ("token", "why"),
    [("abc", "at least 32 characters, got 3"), ("a" * 31, "got 31"), ("a" * 20 + " " + "b" * 20, "visible ASCII")],
)
def test_a_short_or_unsendable_admin_token_stops_start_up(token: str, why: str) -> None:
    with pytest.raises(SettingsError, match="JOTC_ADMIN_TOKEN") as refused:
        load_settings({**GOOD, "JOTC_ADMIN_TOKEN": token})
    assert why in str(refused.value)
    assert "\n" not in str(refused.value)


REPOSITORY = Path(__file__).parents[4]


def test_the_configuration_docs_hold_the_table_printed_from_the_declarations() -> None:
    """docs/configuration.md's table is `python -m jotc_api.settings`: a setting added, removed or
    changed without the docs fails here (regenerate the table with that command)."""
    assert markdown_table() in (REPOSITORY / "docs" / "configuration.md").read_text()


def test_the_charts_values_name_every_setting() -> None:
    values = (REPOSITORY / "deploy" / "helm" / "jotc" / "values.yaml").read_text()
    missing = [declared.env for declared in SETTINGS.values() if not re.search(rf"\b{declared.env}\b", values)]
    assert not missing, f"deploy/helm/jotc/values.yaml (api.settings) does not name {missing}"
