"""The bootstrap from nothing: a copy of scripts/ with no .tools/, on a machine whose PATH has python3
and the system directories only, installs the pinned uv and helm; a failed one leaves nothing behind;
tools that happen to be on PATH are not used unless asked for."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import ROOT

SYSTEM_TOOLS = ("uv", "helm", "docker-compose")
USE_TOOLS = """
import shutil, sys
sys.path.insert(0, "scripts/lib")
import common
for tool in sys.argv[1:]:
    getattr(common, "use_" + tool)()
for tool in sys.argv[1:]:
    print(shutil.which(tool))
"""


@dataclass
class Machine:
    root: Path  # a copy of the repository's scripts/, as a fresh clone has them
    env: dict[str, str]
    tmp: Path  # its TMPDIR, which the bootstrap must leave empty

    def run(self, *tools: str, **env: str) -> subprocess.CompletedProcess[str]:
        """The scripts' own way to get tools (scripts/lib/common.py, use_uv and use_helm), with the
        machine's python3; prints where each tool it was given was found on PATH then."""
        return subprocess.run(
            ["python3", "-B", "-c", USE_TOOLS, *tools],
            cwd=self.root,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    def leftovers(self) -> list[str]:
        beside = [path.name for path in self.root.iterdir() if path.name.startswith(".tools-")]
        return beside + [path.name for path in self.tmp.iterdir()]


def fresh_machine(base: Path) -> Machine:
    root, bin_dir, tmp = base / "repo", base / "bin", base / "tmp"
    shutil.copytree(ROOT / "scripts", root / "scripts", ignore=shutil.ignore_patterns("__pycache__"))
    bin_dir.mkdir()
    tmp.mkdir()
    # The interpreter itself (not a venv's, whose bin/ holds this project's tools), alone in its dir.
    (bin_dir / "python3").symlink_to(Path(sys.executable).resolve())
    path = f"{bin_dir}:/usr/bin:/bin"
    for tool in SYSTEM_TOOLS:
        assert shutil.which(tool, path=path) is None, f"{tool} is on the clean PATH; the test would prove nothing"
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("UV_", "JOTC_", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH"))
    }
    return Machine(root, {**env, "PATH": path, "TMPDIR": str(tmp)}, tmp)


Bootstrapped = tuple[Machine, subprocess.CompletedProcess[str]]


def pinned_uv() -> str:
    match = re.search(r"^uv==(\S+)$", (ROOT / "scripts/tools/bootstrap-requirements.txt").read_text(), re.M)
    assert match
    return match.group(1)


@pytest.fixture(scope="module")
def bootstrapped(tmp_path_factory: pytest.TempPathFactory) -> Bootstrapped:
    machine = fresh_machine(tmp_path_factory.mktemp("bootstrap"))
    return machine, machine.run("uv", "helm")


def test_a_fresh_machine_gets_the_pinned_uv_and_helm(
    bootstrapped: Bootstrapped,
) -> None:
    machine, result = bootstrapped
    assert result.returncode == 0, result.stderr
    uv, helm = result.stdout.splitlines()
    assert uv == str(machine.root / ".tools/uv/bin/uv")
    assert helm == str(machine.root / ".tools/helm/helm")
    version = subprocess.run([uv, "--version"], capture_output=True, text=True, check=True).stdout
    assert version.startswith(f"uv {pinned_uv()} ")
    helm_version = subprocess.run([helm, "version", "--short"], capture_output=True, text=True, check=True).stdout
    assert helm_version.startswith("v")
    assert machine.leftovers() == []
    again = machine.run("uv", "helm")
    assert again.returncode == 0, again.stderr
    assert "installing" not in again.stderr, "a second run reinstalled what was there"


def fake_tools(directory: Path) -> Path:
    """uv, helm and docker-compose that claim the pinned uv version, as a machine's own might."""
    directory.mkdir(exist_ok=True)
    for tool in SYSTEM_TOOLS:
        (directory / tool).write_text(f"#!/bin/sh\necho '{tool} {pinned_uv()} (the machine)'\n")
        (directory / tool).chmod(0o755)
    return directory


def test_tools_on_path_are_used_only_when_asked_for(bootstrapped: Bootstrapped, tmp_path: Path) -> None:
    machine, _ = bootstrapped
    assert machine.root.joinpath(".tools/uv/bin/uv").exists()
    path = f"{fake_tools(tmp_path / 'machine')}:{machine.env['PATH']}"
    found = machine.run("uv", "helm", PATH=path)
    assert found.returncode == 0, found.stderr
    assert found.stdout.split() == [str(machine.root / ".tools/uv/bin/uv"), str(machine.root / ".tools/helm/helm")]
    opted_in = machine.run("uv", "helm", PATH=path, JOTC_SYSTEM_TOOLS="1")
    assert opted_in.returncode == 0, opted_in.stderr
    assert opted_in.stdout.split() == [str(tmp_path / "machine/uv"), str(tmp_path / "machine/helm")]


def test_a_failed_bootstrap_says_why_and_leaves_nothing(tmp_path: Path) -> None:
    machine = fresh_machine(tmp_path)
    (machine.root / "scripts/tools/bootstrap-requirements.txt").write_text("uv==0.0.0\n")
    result = machine.run("uv")
    assert result.returncode != 0
    assert "error: could not install uv 0.0.0 from PyPI" in result.stderr
    assert "0.0.0" in result.stderr.split("pip said:")[1], "pip's own reason is shown"
    assert not (machine.root / ".tools").exists()
    assert machine.leftovers() == []
