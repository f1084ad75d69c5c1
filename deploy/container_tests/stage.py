"""Helpers of the container stage: the repository root, the Compose binary, the stage's report, and
Compose projects (`project(name, *files)`: its own name and free loopback ports, so the stage neither
collides with servers on this machine nor touches a developer's own `jotc` stack).

Test modules and conftest.py import these by name (`from stage import project`); no test module
imports from conftest.py or from another test module."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import compose
from common import run
from jotc_provision import free_port

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = str(Path(compose.__file__).with_name("docker-compose"))
REPORT: dict[str, list[str]] = {"images": [], "engine": [], "timings": []}


def env_example() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs if not key.lstrip().startswith("#")}


@dataclass
class Project:
    """One Compose project: `docker compose -p NAME [-f FILE] --env-file .env.example ...`."""

    name: str
    files: tuple[str, ...] = ()
    ports: dict[str, int] = field(default_factory=dict)

    def environment(self) -> dict[str, str]:
        published = {variable: str(port) for variable, port in self.ports.items()}
        return {**os.environ, **published, "PUBLISH_ADDRESS": "127.0.0.1"}

    def __call__(self, *args: str, timeout: float = 600, check: bool = True, env: dict[str, str] | None = None) -> Any:
        """docker compose ARGS; `env` adds variables to its environment (what `VAR=value docker
        compose ...` does in a shell)."""
        files = [arg for file in self.files for arg in ("-f", file)]
        return run(
            COMPOSE,
            "-p",
            self.name,
            *files,
            "--env-file",
            ".env.example",
            *args,
            env={**self.environment(), **(env or {})},
            cwd=ROOT,
            timeout=timeout,
            check=check,
        )

    def timed(self, what: str, *args: str, timeout: float = 900) -> None:
        started = time.monotonic()
        self(*args, timeout=timeout)
        REPORT["timings"].append(f"{self.name}: {what} {time.monotonic() - started:.0f} s")

    def containers(self) -> list[dict[str, Any]]:
        out = self("ps", "--all", "--format", "json").stdout.strip()
        if not out:
            return []
        if out.startswith("["):
            parsed: list[dict[str, Any]] = json.loads(out)
            return parsed
        return [json.loads(line) for line in out.splitlines()]

    def url(self, variable: str, path: str = "") -> str:
        return f"http://127.0.0.1:{self.ports[variable]}{path}"

    def leftovers(self, docker: str) -> dict[str, list[str]]:
        """Containers, volumes, networks and images (tagged or not) of this project still in the engine."""
        label = f"label=com.docker.compose.project={self.name}"
        found = {
            "containers": run(docker, "ps", "--all", "--quiet", "--filter", label).stdout.split(),
            "volumes": run(docker, "volume", "ls", "--quiet", "--filter", label).stdout.split(),
            "networks": run(docker, "network", "ls", "--quiet", "--filter", label).stdout.split(),
            "images": run(docker, "image", "ls", "--all", "--quiet", "--filter", label).stdout.split(),
        }
        return {kind: ids for kind, ids in found.items() if ids}


def project(name: str, *files: str) -> Project:
    variables = ("API_PORT", "POSTGRES_PORT", "REDIS_PORT", "ADMINER_PORT", "REDISINSIGHT_PORT", "LOCUST_PORT")
    return Project(name=f"{name}-{os.getpid()}", files=files, ports={variable: free_port() for variable in variables})
