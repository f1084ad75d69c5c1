"""What a Granian worker and the commands set up, run here in process: log configuration (JSON and
console, libraries' logs in the same format, no control character written raw), /metrics summing
the worker files of multiprocess mode, the drain flag a worker maps read-only, the cgroup v1 CPU
quota, the metrics directory made when none is given, and jotc-retention's exit on a database
error. No server, no database."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest
import structlog
from prometheus_client import values
from structlog.testing import capture_logs

from jotc_api import logs, retention, server
from jotc_api.drain import FLAG_ENV, DrainFlag
from jotc_api.logs import AccessLog, configure_logging, escaped
from jotc_api.metrics import metrics_route


@pytest.fixture
def restored_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """configure_logging() changes process-wide state: put structlog and the root logger back. The
    access logger is a fresh one for the test: once used, the module's own would stay bound to
    this test's captured output."""
    monkeypatch.setattr(logs, "access_log", structlog.get_logger("jotc.access"))
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.configure(**saved)
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restored_logging")
def test_json_logs_are_one_object_a_line_for_structlog_and_libraries_alike(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "json")
    structlog.get_logger("test.logs").info("hello", n=1)
    structlog.get_logger("test.logs").debug("below the level")
    logging.getLogger("some.library").warning("from %s", "a library")
    lines = [msgspec.json.decode(line) for line in capsys.readouterr().out.splitlines()]
    assert [(line["event"], line["level"]) for line in lines] == [("hello", "info"), ("from a library", "warning")]
    assert lines[0]["n"] == 1
    assert all(line["timestamp"].endswith("Z") for line in lines), "UTC, ISO 8601"


@pytest.mark.usefixtures("restored_logging")
def test_console_logs_are_readable_lines(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("WARNING", "console")
    structlog.get_logger("test.logs").warning("disk nearly full", free="3%")
    structlog.get_logger("test.logs").info("below the level")
    out = capsys.readouterr().out
    assert "disk nearly full" in out
    assert "free=3%" in out
    assert "below the level" not in out
    assert not out.lstrip().startswith("{")
    assert "\x1b[" not in out, "no colours when stderr is not a terminal"


HOSTILE = "/a\x1b[31m\x08\x00\x7f\x9b\u202e\u2028\tz"
SHOWN = r"/a\x1b[31m\x08\x00\x7f\x9b\u202e\u2028\tz"
RAW = ["\x1b", "\x08", "\x00", "\x7f", "\x9b", "\u202e", "\u2028", "\t"]


def test_escaped_writes_what_is_not_printable_as_a_python_literal() -> None:
    assert escaped(HOSTILE) == SHOWN
    assert escaped("José ☁ plain") == "José ☁ plain"


@pytest.mark.usefixtures("restored_logging")
def test_console_lines_escape_every_value_the_message_and_a_librarys_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "console")
    structlog.get_logger("test.logs").warning(f"event {HOSTILE}", path=HOSTILE)
    AccessLog("console").add("GET", HOSTILE, 404, 0.001, "rid")
    logging.getLogger("some.library").warning("from %s", HOSTILE)
    out = capsys.readouterr().out
    assert not [raw for raw in RAW if raw in out], repr(out)
    assert out.count(SHOWN) == 4, out


@pytest.mark.usefixtures("restored_logging")
def test_console_tracebacks_keep_their_line_breaks_and_escape_the_rest(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "console")
    for logger in (structlog.get_logger("test.logs"), logging.getLogger("some.library")):
        try:
            raise ValueError(HOSTILE)
        except ValueError:
            logger.exception("failed")
    out = capsys.readouterr().out
    assert not [raw for raw in RAW if raw in out], repr(out)
    assert out.count(f"ValueError: {SHOWN}") == 2, out
    assert out.count("Traceback (most recent call last):\n") == 2, out


def test_json_access_lines_escape_every_control_character_and_read_back() -> None:
    lines = AccessLog("json")

    async def add() -> None:
        lines.add("GET", HOSTILE, 404, 0.001, "rid")
        lines.add("GET", "/jumps/José", 404, 0.001, "rid")

    asyncio.run(add())
    hostile, plain = lines.pending
    assert not [raw for raw in RAW if raw.encode() in hostile], hostile
    assert msgspec.json.decode(hostile)["path"] == HOSTILE
    assert msgspec.json.decode(plain)["path"] == "/jumps/José"


def test_the_console_access_line_goes_through_structlog() -> None:
    with capture_logs() as logs:
        AccessLog("console").add("GET", "/jumps/1", 200, 0.0012345, "rid-1")
    assert logs == [
        {"event": "request", "log_level": "info", "method": "GET", "path": "/jumps/1", "status": 200, "ms": 1.23}
    ]


def test_metrics_sum_the_worker_files_in_multiprocess_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    for pid, amount in ((101, 2.0), (102, 3.0)):  # two workers' files
        value = values.MultiProcessValue(process_identifier=lambda pid=pid: pid)(
            "counter", "jotc_unit_things", "jotc_unit_things_total", (), (), "things"
        )
        value.inc(amount)
    body = metrics_route.fn().content.decode()
    assert "jotc_unit_things_total 5.0" in body
    assert "python_gc_objects_collected_total" not in body, "this process's own registry is not what is served"


def test_without_multiprocess_mode_metrics_are_this_process_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    assert "python_gc_objects_collected_total" in metrics_route.fn().content.decode()


def test_a_worker_sees_the_drain_its_main_process_begins() -> None:
    flag = DrainFlag.create()
    try:
        assert flag.path is not None
        worker = DrainFlag.attach({FLAG_ENV: str(flag.path)})
        assert worker.draining is False
        flag.begin()
        assert worker.draining is True, "one shared byte"
        with pytest.raises(TypeError):
            worker.begin()  # the worker's view is read-only
    finally:
        flag.remove()
    assert flag.path is not None
    assert not flag.path.parent.exists()


def test_a_private_flag_has_nothing_to_remove() -> None:
    flag = DrainFlag.attach({})
    flag.begin()
    assert flag.draining
    flag.remove()  # no file, no error


@pytest.mark.parametrize(
    ("quota", "period", "expected"),
    [("150000", "100000", 1.5), ("-1", "100000", None), ("garbage", "100000", None), (None, None, None)],
    ids=["limited", "unlimited", "unreadable", "absent"],
)
def test_the_cgroup_v1_quota_when_v2_says_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quota: str | None, period: str | None, expected: float | None
) -> None:
    quota_file, period_file = tmp_path / "cpu.cfs_quota_us", tmp_path / "cpu.cfs_period_us"
    if quota is not None and period is not None:
        quota_file.write_text(quota + "\n")
        period_file.write_text(period + "\n")
    monkeypatch.setattr(server, "CGROUP_V1_QUOTA", quota_file)
    monkeypatch.setattr(server, "CGROUP_V1_PERIOD", period_file)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert server.cpu_quota(tmp_path / "cpu.max") == expected


def test_without_a_metrics_directory_one_is_made(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")  # restored after the test, whatever it was
    server.prepare_metrics_dir()
    made = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    try:
        assert made.is_dir()
        assert made.name.startswith("jotc-metrics-")
        assert list(made.iterdir()) == []
    finally:
        made.rmdir()


def test_retention_exits_1_on_a_database_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://jotc@127.0.0.1:1/jotc")
    monkeypatch.setenv("JOTC_RETENTION_DAYS", "30")
    monkeypatch.setattr(retention.psycopg, "connect", lambda *_, **__: nullcontext(object()))

    def failing(connection: Any, days: int, chunk_rows: int) -> retention.Outcome:
        assert (days, chunk_rows) == (30, retention.DEFAULT_CHUNK_ROWS)
        raise psycopg.errors.UndefinedTable('relation "jump_requests" does not exist\nLINE 3: ...')

    monkeypatch.setattr(retention, "apply_retention", failing)
    with pytest.raises(SystemExit) as exited:
        retention.main()
    assert exited.value.code == 1
    assert capsys.readouterr().err == (
        'jotc-retention: failed, the chunk in progress was rolled back: relation "jump_requests" does not exist\n'
    )
