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
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROLES = {"ui", "master", "worker", "headless", "headless-master"}


def locust_arguments(env: dict[str, str]) -> list[str]:
    role = env.get("LOCUST_ROLE", "ui").strip() or "ui"
    if role not in ROLES:
        raise SystemExit(f"jotc-loadtest: LOCUST_ROLE must be one of {', '.join(sorted(ROLES))}, got {role!r}")
    # LOCUST_LOCUSTFILE (e.g. a ConfigMap mounted by the Helm chart) wins over the built-in scenarios.
    locustfile = env.get("LOCUST_LOCUSTFILE") or str(Path(__file__).with_name("locustfile.py"))
    arguments = ["-f", locustfile]
    if "LOCUST_HOST" not in env:
        arguments += ["--host", env.get("JOTC_TARGET", "http://api:4000")]
    if role == "worker":
        return [*arguments, "--worker"]
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


def main() -> None:
    arguments = locust_arguments(dict(os.environ))
    os.execv(sys.executable, [sys.executable, "-m", "locust", *arguments])  # noqa: S606 - our own interpreter


if __name__ == "__main__":
    main()
