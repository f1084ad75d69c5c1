"""jotc-loadtest: one entrypoint for every Locust role, chosen by LOCUST_ROLE.

    ui               Locust's web UI on :8089 (default)
    master           web UI on :8089, waits for workers on :5557
    worker           connects to LOCUST_MASTER_NODE_HOST
    headless         a bounded run (LOCUST_USERS, LOCUST_SPAWN_RATE, LOCUST_RUN_TIME) with reports
                     and service-objective gates: exits 1 when one is missed
    headless-master  the same, spread over LOCUST_EXPECT_WORKERS workers

The target is LOCUST_HOST (or JOTC_TARGET), default http://api:4000. LOCUST_LOCUSTFILE replaces
the built-in scenarios with another file. Any other LOCUST_* variable
is read by Locust itself. Reports go to JOTC_REPORT_DIR (default ./reports): report_stats.csv and
friends, and report.html.

The web UI (ui, master) asks for a login when JOTC_LT_WEB_USERNAME and JOTC_LT_WEB_PASSWORD are
set: Locust's --web-login, checked by webauth.py, loaded beside any locustfile. How users connect
(JOTC_LT_CONNECT_TO, JOTC_LT_TLS_*, JOTC_LT_CONNECTION_*: connections.py) is checked here, so a
wrong value stops the command with one line before Locust starts.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from jotc_loadtest.connections import DEFAULT_TARGET, ConnectionSettings

ROLES = {"ui", "master", "worker", "headless", "headless-master"}


def locust_arguments(env: dict[str, str]) -> list[str]:
    role = env.get("LOCUST_ROLE", "ui").strip() or "ui"
    if role not in ROLES:
        raise SystemExit(f"jotc-loadtest: LOCUST_ROLE must be one of {', '.join(sorted(ROLES))}, got {role!r}")
    try:
        ConnectionSettings.from_env(env)
    except ValueError as error:
        raise SystemExit(f"jotc-loadtest: {error}") from None
    # LOCUST_LOCUSTFILE (e.g. a ConfigMap mounted by the Helm chart) wins over the built-in scenarios.
    locustfile = env.get("LOCUST_LOCUSTFILE") or str(Path(__file__).with_name("locustfile.py"))
    arguments = ["-f", locustfile]
    if "LOCUST_HOST" not in env:
        arguments += ["--host", env.get("JOTC_TARGET", DEFAULT_TARGET)]
    if role == "worker":
        return [*arguments, "--worker"]
    if role in {"ui", "master"} and web_login(env):
        arguments[1] += "," + str(Path(__file__).with_name("webauth.py"))
        arguments.append("--web-login")
    if role in {"master", "headless-master"}:
        arguments.append("--master")
    if role.startswith("headless"):
        reports = Path(env.get("JOTC_REPORT_DIR", "reports"))
        reports.mkdir(parents=True, exist_ok=True)
        arguments += [
            "--headless",
            "--csv",
            str(reports / "report"),
            "--html",
            str(reports / "report.html"),
            "--only-summary",
        ]
        for variable, default in (("LOCUST_USERS", "20"), ("LOCUST_SPAWN_RATE", "10"), ("LOCUST_RUN_TIME", "60s")):
            if variable not in env:
                flag = {
                    "LOCUST_USERS": "--users",
                    "LOCUST_SPAWN_RATE": "--spawn-rate",
                    "LOCUST_RUN_TIME": "--run-time",
                }[variable]
                arguments += [flag, default]
    return arguments


def credentials(env: Mapping[str, str]) -> tuple[str, str]:
    """The web UI's (username, password), surrounding white space dropped (a Secret's value may end
    in a newline); webauth.py checks the login form against them."""
    return env.get("JOTC_LT_WEB_USERNAME", "").strip(), env.get("JOTC_LT_WEB_PASSWORD", "").strip()


def web_login(env: Mapping[str, str]) -> bool:
    """Whether the web UI asks for a login: both credentials set, or neither (then it does not)."""
    username, password = credentials(env)
    if bool(username) != bool(password):
        raise SystemExit(
            "jotc-loadtest: the web UI's login needs both JOTC_LT_WEB_USERNAME and JOTC_LT_WEB_PASSWORD; "
            "set the missing one (or neither, for a UI without a login)"
        )
    return bool(username)


def main() -> None:
    arguments = locust_arguments(dict(os.environ))
    os.execv(sys.executable, [sys.executable, "-m", "locust", *arguments])  # noqa: S606 - our own interpreter


if __name__ == "__main__":
    main()
