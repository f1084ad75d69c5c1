"""The container stage's fixtures (an engine, the images the stack names) and its report at the end.

Under CI=true a missing engine fails the stage; elsewhere it is skipped with a one-line reason.
The helpers (ROOT, REPORT, Compose projects) are in stage.py, which the test modules import.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from engine import Engine, EngineUnavailableError, ensure_engine, run
from images import Provided, images_named, provide
from stage import COMPOSE, DOCKERFILES, REPORT, ROOT


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    try:
        found = ensure_engine()
    except EngineUnavailableError as reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"container stage must run under CI=true, but: {reason}", pytrace=False)
        pytest.skip(f"no Docker engine: {reason}")
    REPORT["engine"].extend(found.notes)
    yield found
    found.stop()


@pytest.fixture(scope="session")
def images(engine: Engine) -> list[Provided]:
    """Every image the compose files and Dockerfiles name, official or stood in for."""
    config = json.loads(run(COMPOSE, "config", "--format", "json", cwd=ROOT).stdout)
    started = time.monotonic()
    provided = [provide(engine.cli, image) for image in images_named(config, DOCKERFILES)]
    REPORT["timings"].append(f"images ready {time.monotonic() - started:.0f} s")
    REPORT["images"].extend(f"{item.image}: {item.source}" for item in provided)
    return provided


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for title, lines in (("engine", REPORT["engine"]), ("images", REPORT["images"]), ("timings", REPORT["timings"])):
        if lines:
            terminalreporter.write_sep("-", f"container stage: {title}")
            for line in lines:
                terminalreporter.write_line(f"  {line}")
