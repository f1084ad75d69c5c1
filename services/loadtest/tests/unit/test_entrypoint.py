"""jotc-loadtest's entrypoint as plain logic, in process: the Locust command line each role gets
(LOCUST_ROLE and friends), and the exec into Locust. The real command: system/test_loadtest.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from jotc_loadtest import entrypoint
from jotc_loadtest.entrypoint import locust_arguments


@pytest.mark.parametrize(
    ("role", "expected"),
    [
        ("worker", ["--worker"]),
        ("master", ["--master"]),
        ("headless", ["--headless", "--csv", "--html"]),
        ("headless-master", ["--master", "--headless"]),
    ],
)
def test_roles(role: str, expected: list[str], tmp_path: Path) -> None:
    arguments = locust_arguments({"LOCUST_ROLE": role, "JOTC_REPORT_DIR": str(tmp_path)})
    for flag in expected:
        assert flag in arguments, f"{role}: no {flag} in {arguments}"
    assert "--host" in arguments, f"{role}: no --host in {arguments}"


def test_unknown_role_is_refused() -> None:
    with pytest.raises(SystemExit, match="LOCUST_ROLE must be one of"):
        locust_arguments({"LOCUST_ROLE": "boss"})


def test_a_mounted_locustfile_replaces_the_built_in_one(tmp_path: Path) -> None:
    arguments = locust_arguments({"LOCUST_LOCUSTFILE": "/locustfile/locustfile.py", "JOTC_REPORT_DIR": str(tmp_path)})
    assert arguments[:2] == ["-f", "/locustfile/locustfile.py"], f"arguments {arguments}"
    built_in = locust_arguments({})[1]
    assert built_in.endswith("jotc_loadtest/locustfile.py"), f"default locustfile {built_in}"


def test_the_ui_is_the_default_role_and_targets_the_api() -> None:
    arguments = locust_arguments({"LOCUST_ROLE": " "})
    assert arguments[2:] == ["--host", "http://api:4000"], f"arguments {arguments}"
    target = locust_arguments({"JOTC_TARGET": "http://127.0.0.1:4000"})
    assert target[2:] == ["--host", "http://127.0.0.1:4000"], f"arguments {target}"


def test_locust_host_is_left_to_locust() -> None:
    arguments = locust_arguments({"LOCUST_HOST": "http://elsewhere:4000", "JOTC_TARGET": "http://api:4000"})
    assert "--host" not in arguments, f"LOCUST_HOST is Locust's own: {arguments}"


def test_a_worker_gets_no_reports_or_load_shape(tmp_path: Path) -> None:
    arguments = locust_arguments({"LOCUST_ROLE": "worker", "JOTC_REPORT_DIR": str(tmp_path / "reports")})
    assert arguments[-1] == "--worker", f"arguments {arguments}"
    assert "--headless" not in arguments, f"arguments {arguments}"
    assert "--users" not in arguments, f"arguments {arguments}"
    assert not (tmp_path / "reports").exists(), "a worker made a report directory"


def test_a_headless_run_writes_reports_and_has_a_bounded_shape(tmp_path: Path) -> None:
    reports = tmp_path / "made" / "reports"
    arguments = locust_arguments({"LOCUST_ROLE": "headless", "JOTC_REPORT_DIR": str(reports)})
    assert reports.is_dir(), "the report directory was not made"
    for flag, value in (("--csv", reports / "report"), ("--html", reports / "report.html")):
        assert arguments[arguments.index(flag) + 1] == str(value), f"{flag} in {arguments}"
    shape = {flag: arguments[arguments.index(flag) + 1] for flag in ("--users", "--spawn-rate", "--run-time")}
    assert shape == {"--users": "20", "--spawn-rate": "10", "--run-time": "60s"}, f"default shape {shape}"
    assert "--only-summary" in arguments, f"arguments {arguments}"


def test_a_load_shape_set_for_locust_is_not_overridden(tmp_path: Path) -> None:
    env = {"LOCUST_ROLE": "headless", "JOTC_REPORT_DIR": str(tmp_path), "LOCUST_USERS": "5", "LOCUST_RUN_TIME": "5s"}
    arguments = locust_arguments(env)
    assert "--users" not in arguments, f"LOCUST_USERS is Locust's own: {arguments}"
    assert "--run-time" not in arguments, f"LOCUST_RUN_TIME is Locust's own: {arguments}"
    assert arguments[arguments.index("--spawn-rate") + 1] == "10", f"arguments {arguments}"


def test_main_replaces_itself_with_locust(monkeypatch: pytest.MonkeyPatch) -> None:
    executed = []
    monkeypatch.setattr(entrypoint.os, "execv", lambda path, argv: executed.append((path, argv)))
    monkeypatch.setenv("LOCUST_ROLE", "worker")
    monkeypatch.delenv("LOCUST_HOST", raising=False)
    monkeypatch.delenv("LOCUST_LOCUSTFILE", raising=False)
    monkeypatch.setenv("JOTC_TARGET", "http://127.0.0.1:4000")
    entrypoint.main()
    assert len(executed) == 1, f"exec calls: {executed}"
    path, argv = executed[0]
    assert path == sys.executable, f"exec'd {path}, not this interpreter"
    assert argv[:3] == [sys.executable, "-m", "locust"], f"argv {argv}"
    assert argv[3:] == locust_arguments({"LOCUST_ROLE": "worker", "JOTC_TARGET": "http://127.0.0.1:4000"}), argv


PASSWORD = "a-password-of-the-operator"  # pragma: allowlist secret
LOGIN = {"JOTC_LT_WEB_USERNAME": "operator", "JOTC_LT_WEB_PASSWORD": PASSWORD}


@pytest.mark.parametrize("role", ["ui", "master"])
def test_with_credentials_the_web_ui_asks_for_a_login(role: str) -> None:
    arguments = locust_arguments({"LOCUST_ROLE": role, "LOCUST_LOCUSTFILE": "/locustfile/locustfile.py", **LOGIN})
    assert "--web-login" in arguments, f"arguments {arguments}"
    # The login's check is loaded beside whichever locustfile runs, the mounted one included.
    locustfile, webauth = arguments[1].split(",")
    assert locustfile == "/locustfile/locustfile.py", f"arguments {arguments}"
    assert webauth.endswith("jotc_loadtest/webauth.py"), f"arguments {arguments}"
    assert Path(webauth).is_file(), webauth


@pytest.mark.parametrize("role", ["worker", "headless", "headless-master"])
def test_roles_without_a_web_ui_get_no_login(role: str, tmp_path: Path) -> None:
    arguments = locust_arguments({"LOCUST_ROLE": role, "JOTC_REPORT_DIR": str(tmp_path), **LOGIN})
    assert "--web-login" not in arguments, f"arguments {arguments}"
    assert "," not in arguments[1], f"arguments {arguments}"


def test_without_credentials_the_ui_has_no_login() -> None:
    arguments = locust_arguments({"LOCUST_ROLE": "ui", "JOTC_LT_WEB_USERNAME": " ", "JOTC_LT_WEB_PASSWORD": ""})
    assert "--web-login" not in arguments, f"arguments {arguments}"


@pytest.mark.parametrize("missing", ["JOTC_LT_WEB_USERNAME", "JOTC_LT_WEB_PASSWORD"])
def test_half_a_login_is_refused(missing: str) -> None:
    env = {"LOCUST_ROLE": "master", **LOGIN, missing: "  "}
    with pytest.raises(SystemExit, match="needs both JOTC_LT_WEB_USERNAME and JOTC_LT_WEB_PASSWORD") as refused:
        locust_arguments(env)
    assert "\n" not in str(refused.value)


def test_a_wrong_connection_setting_stops_the_command_with_one_line() -> None:
    with pytest.raises(SystemExit, match=r"^jotc-loadtest: JOTC_LT_CONNECTION_REQUESTS must be") as refused:
        locust_arguments({"LOCUST_ROLE": "worker", "JOTC_LT_CONNECTION_REQUESTS": "0"})
    assert "\n" not in str(refused.value)
