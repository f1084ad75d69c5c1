"""The scripts' provisioning (scripts/lib/jotc_provision.py) as the scripts run it: with the machine's
own python3, which has no PostgreSQL driver. scripts/bench and scripts/dev make databases that way."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from support import ROOT

MACHINE_PYTHON = str(Path(sys.executable).resolve())  # the interpreter itself, not this environment
SERVER = os.environ.get("DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"
MAKE_USE_DROP = """
import sys
sys.path.insert(0, "scripts/lib")
import jotc_provision
with jotc_provision.fresh_database(sys.argv[1]) as url:
    print(jotc_provision.admin_sql(url, "SELECT current_database()")[0][0])
"""


def machine_python(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MACHINE_PYTHON, "-I", *args], cwd=ROOT, capture_output=True, text=True, check=False, timeout=120
    )


def test_a_fresh_database_is_made_and_dropped_without_psycopg_in_the_scripts_python() -> None:
    lacks = machine_python("-c", "import psycopg")
    assert lacks.returncode != 0, "this python3 has psycopg: the test would prove nothing"
    made = machine_python("-c", MAKE_USE_DROP, SERVER)
    assert made.returncode == 0, f"the scripts could not make a database:\n{made.stderr}"
    name = made.stdout.strip()
    assert name.startswith("jotc_test_"), made.stdout
    gone = machine_python(
        "-c",
        "import sys; sys.path.insert(0, 'scripts/lib'); import jotc_provision; "
        "print(jotc_provision.admin_sql(sys.argv[1], "
        "'SELECT count(*) FROM pg_database WHERE datname = %s', (sys.argv[2],)))",
        SERVER,
        name,
    )
    assert gone.stdout.strip() == "[(0,)]", f"the database was not dropped: {gone.stdout} {gone.stderr}"
