"""jotc-migrate's command line and configuration as plain logic, in process: the command chosen,
DATABASE_URL and the wait setting checked before anything connects, and the revisions this build
knows. The same errors through the real command: integration/test_migrations.py."""

from __future__ import annotations

import argparse
import os

import pytest
from support import REVISIONS

from jotc_migrations.cli import flag, head_revision, main, parse_args, product_head, seconds
from jotc_migrations.database import DatabaseURLError, describe, sqlalchemy_url
from jotc_migrations.errors import EXIT_OK, EXIT_UNAVAILABLE, MigrateError


@pytest.fixture(autouse=True)
def no_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the runner's environment holds, each test sets what it needs."""
    for variable in (
        "DATABASE_URL",
        "JOTC_MIGRATE_WAIT_SECONDS",
        "JOTC_MIGRATE_EXTRA_VERSIONS",
        "JOTC_MIGRATE_SERVING_REVISION",
        "JOTC_MIGRATE_ALLOW_BREAKING",
    ):
        monkeypatch.delenv(variable, raising=False)


def test_no_command_means_upgrade() -> None:
    args = parse_args([])
    assert (args.command, args.wait) == ("upgrade", 60.0), f"parsed {args}"
    args = parse_args(["--wait", "5"])
    assert (args.command, args.wait) == ("upgrade", 5.0), f"parsed {args}"


def test_commands_and_their_options() -> None:
    check = parse_args(["check", "--wait", "3"])
    assert (check.command, check.wait) == ("check", 3.0), f"parsed {check}"
    assert parse_args(["check"]).wait == 0.0, "check waits only when asked"
    down = parse_args(["downgrade", "base"])
    assert (down.command, down.revision) == ("downgrade", "base"), f"parsed {down}"


def test_the_wait_setting_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOTC_MIGRATE_WAIT_SECONDS", "7")
    assert parse_args(["upgrade"]).wait == 7.0, "JOTC_MIGRATE_WAIT_SECONDS was not the default"


def test_a_bad_wait_setting_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOTC_MIGRATE_WAIT_SECONDS", "soon")
    with pytest.raises(MigrateError, match="JOTC_MIGRATE_WAIT_SECONDS") as raised:
        parse_args(["upgrade"])
    assert raised.value.exit_code == EXIT_UNAVAILABLE, f"exit code {raised.value.exit_code}"


@pytest.mark.parametrize(
    ("value", "complaint"), [("soon", "not a number of seconds"), ("-1", "0 or more")]
)
def test_seconds_must_be_a_number_not_below_zero(value: str, complaint: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=complaint):
        seconds(value)


def test_main_without_database_url_says_what_to_set(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["upgrade"]) == EXIT_UNAVAILABLE, "expected exit 2 without DATABASE_URL"
    said = capsys.readouterr().err.strip()
    assert said == (
        "jotc-migrate: DATABASE_URL is not set; "
        "expected e.g. postgresql://user:password@host:5432/jotc"
    ), f"said {said!r}"


def test_main_refuses_a_url_of_another_database(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", "mysql://root@localhost/jotc")
    assert main(["check"]) == EXIT_UNAVAILABLE, "expected exit 2 for a mysql:// URL"
    said = capsys.readouterr().err
    assert "must be a postgresql:// URL" in said, f"said {said!r}"


def test_main_names_a_bad_wait_setting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("JOTC_MIGRATE_WAIT_SECONDS", "soon")
    assert main(["upgrade"]) == EXIT_UNAVAILABLE, "expected exit 2 for a bad wait setting"
    said = capsys.readouterr().err
    assert "JOTC_MIGRATE_WAIT_SECONDS" in said, f"said {said!r}"


def test_head_prints_this_builds_revision(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["head"]) == EXIT_OK, "jotc-migrate head failed"
    printed = capsys.readouterr().out.strip()
    assert printed == head_revision() == product_head(), f"printed {printed!r}"


def test_extra_versions_extend_the_chain_past_the_products_head(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JOTC_MIGRATE_EXTRA_VERSIONS", str(REVISIONS / "expand"))
    assert head_revision() == "t_expand", f"head with tests/revisions/expand: {head_revision()}"
    assert product_head() != "t_expand", "product_head() must ignore the extra versions"


def test_two_heads_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # t_expand and t_contract both follow the product's head: two heads.
    both = os.pathsep.join([str(REVISIONS / "expand"), str(REVISIONS / "contract")])
    monkeypatch.setenv("JOTC_MIGRATE_EXTRA_VERSIONS", both)
    with pytest.raises(MigrateError, match="2 migration heads"):
        head_revision()


def test_urls_pin_psycopg_and_are_described_without_the_password() -> None:
    url = sqlalchemy_url(" postgresql://jotc:secret@db.example:6432/jotc ")
    assert url.drivername == "postgresql+psycopg", f"driver {url.drivername}"
    assert describe(url) == "db.example:6432/jotc", describe(url)
    bare = sqlalchemy_url("postgres:///jotc")
    assert describe(bare) == "localhost:5432/jotc", describe(bare)


@pytest.mark.parametrize(
    ("raw", "complaint"),
    [
        (None, "DATABASE_URL is not set"),
        ("  ", "DATABASE_URL is not set"),
        ("not a url", "not a valid URL"),
        ("sqlite:///jotc.db", "must be a postgresql:// URL"),
    ],
)
def test_bad_urls_are_refused_with_a_reason(raw: str | None, complaint: str) -> None:
    with pytest.raises(DatabaseURLError, match=complaint):
        sqlalchemy_url(raw)


def test_the_guards_options_and_their_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = parse_args(["upgrade"])
    assert (plain.serving, plain.allow_breaking) == (None, False), f"parsed {plain}"
    told = parse_args(["--serving", "0002", "--allow-breaking"])
    assert (told.command, told.serving, told.allow_breaking) == ("upgrade", "0002", True), told
    down = parse_args(["downgrade", "0001", "--serving", "0001"])
    assert (down.serving, down.allow_breaking) == ("0001", False), f"parsed {down}"
    monkeypatch.setenv("JOTC_MIGRATE_SERVING_REVISION", " 0002 ")
    monkeypatch.setenv("JOTC_MIGRATE_ALLOW_BREAKING", "true")
    settings = parse_args(["upgrade"])
    assert (settings.serving, settings.allow_breaking) == ("0002", True), f"parsed {settings}"
    monkeypatch.setenv("JOTC_MIGRATE_SERVING_REVISION", "")
    assert parse_args(["upgrade"]).serving is None, "an empty setting names no revision"


@pytest.mark.parametrize(
    ("value", "on"),
    [
        ("1", True),
        ("true", True),
        ("yes", True),
        (" TRUE ", True),
        ("", False),
        ("0", False),
        ("false", False),
        ("no", False),
    ],
)
def test_allow_breaking_reads_yes_and_no(value: str, on: bool) -> None:
    assert flag({"JOTC_MIGRATE_ALLOW_BREAKING": value}, "JOTC_MIGRATE_ALLOW_BREAKING") is on
    assert flag({}, "JOTC_MIGRATE_ALLOW_BREAKING") is False, "unset is false"


def test_a_bad_allow_breaking_setting_is_named() -> None:
    with pytest.raises(MigrateError) as raised:
        flag({"JOTC_MIGRATE_ALLOW_BREAKING": "maybe"}, "JOTC_MIGRATE_ALLOW_BREAKING")
    assert raised.value.exit_code == EXIT_UNAVAILABLE, f"exit code {raised.value.exit_code}"
    assert str(raised.value) == (
        "JOTC_MIGRATE_ALLOW_BREAKING is 'maybe'; set it to true or false (or 1/0, yes/no)"
    ), str(raised.value)
