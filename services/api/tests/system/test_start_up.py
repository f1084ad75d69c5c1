"""The jotc-api command itself refuses a bad setting: exit status 2 and one line naming the variable,
before binding the port (tests/unit/test_settings.py covers every setting in process)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from jotc_provision import free_port, port_open

JOTC_API = str(Path(sys.executable).with_name("jotc-api"))


def test_the_command_stops_with_one_line_naming_the_bad_setting() -> None:
    port = free_port()
    env = {**os.environ, "DATABASE_URL": "mysql://root@localhost/jotc", "PORT": str(port)}
    result = subprocess.run([JOTC_API], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2, f"jotc-api exited {result.returncode}:\n{result.stderr}"
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], f"more than one line:\n{result.stderr}"
    assert result.stderr.startswith("jotc-api: "), result.stderr
    assert "DATABASE_URL" in result.stderr, result.stderr
    assert not port_open("127.0.0.1", port), "it bound the port before checking its settings"
