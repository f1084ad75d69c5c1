"""The container stage's fixtures (an engine, the images the stack names, the three images built from
this checkout) and its report at the end.

Under CI=true a missing engine fails the stage; elsewhere it is skipped with a one-line reason.
The helpers (ROOT, REPORT, Compose projects) are in stage.py, which the test modules import.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from common import run
from engine import Engine, EngineUnavailableError, ensure_engine
from stage import COMPOSE, REPORT, ROOT, project

# The images the three Dockerfiles build (their org.opencontainers.image.title).
BUILT = ("jotc-api", "jotc-db-migrations", "jotc-loadtest")


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    try:
        found = ensure_engine()
    except EngineUnavailableError as reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"container stage must run under CI=true, but: {reason}", pytrace=False)
        pytest.skip(f"no Docker engine: {reason}")
    try:
        yield found
    finally:
        found.stop()
        REPORT["engine"].extend(found.notes)


@pytest.fixture(scope="session")
def images(engine: Engine) -> list[str]:
    """Every image the stack names, official or stood in for, made ready by scripts/standins: the
    command a newcomer without an image registry runs. Its table goes into the report."""
    started = time.monotonic()
    prepared = run(str(ROOT / "scripts/standins"), env={**os.environ, "JOTC_COMPOSE": COMPOSE}, timeout=3600)
    REPORT["timings"].append(f"scripts/standins {time.monotonic() - started:.0f} s")
    table = [line.strip() for line in prepared.stdout.splitlines() if line.startswith("  ")]
    REPORT["images"].extend(table)
    return table


@pytest.fixture(scope="session")
def built(engine: Engine, images: list[str]) -> Iterator[None]:
    """The three images built from this checkout, once for the session: every project then runs them
    (their pull_policy is never, so Compose builds only what is missing). Afterwards the builds they
    replaced, left untagged, are removed: the stage leaves the engine no heavier than it found it."""
    project("jotc-build").timed("docker compose build", "build")
    yield
    for title in BUILT:
        label = f"label=org.opencontainers.image.title={title}"
        run(engine.cli, "image", "prune", "--force", "--filter", label, timeout=300)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for title, lines in (("engine", REPORT["engine"]), ("images", REPORT["images"]), ("timings", REPORT["timings"])):
        if lines:
            terminalreporter.write_sep("-", f"container stage: {title}")
            for line in lines:
                terminalreporter.write_line(f"  {line}")
