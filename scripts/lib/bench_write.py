"""The write alone, without the API: the recorder's own statements run from psycopg in the API's
environment, for --trace's control (the database's slow answers told from the API's) and for
--statements (the write's candidate forms).
"""

from __future__ import annotations

from pathlib import Path

from bench_measure import in_api_env

# Run by the API's Python on one connection: no HTTP, no event loop, no API. Mode "trace": the
# recorder's statement for a batch of one, one row per autocommit, every one timed, as a writer runs
# it at one connection. Mode "forms": the write's candidate forms at 1 and 16 rows a batch (the
# batch-of-one statement at 1), with the CPU per row of this client (the API's share of a write) and
# of its PostgreSQL backend, and the batch's median wall time; every form writes the same rows and
# statistics.
WRITE_CODE = r"""
import gc, json, re, statistics, sys, time, uuid
import psycopg
from jotc_api.recorder import RECORD_BATCH, RECORD_ONE
from jotc_api.tables import pack_clouds
mode, url, seconds, lib = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
sys.path.insert(0, lib)
from bench_measure import cpu_seconds  # the bench's own /proc reader
clouds = pack_clouds(bytes([0, 0, 1, 0, 0, 1, 0]))  # BODY's game
TEXT = re.sub(r"%\((\w+)\)b", r"%(\1)s", RECORD_BATCH)
STATS = ("INSERT INTO user_stats AS stats (user_name, requests, last_request_at) "
         "SELECT u, count(*), now() FROM unnest(%(users)s::text[]) AS u GROUP BY u ORDER BY u "
         "ON CONFLICT (user_name) DO UPDATE SET requests = stats.requests + excluded.requests, "
         "last_request_at = greatest(stats.last_request_at, excluded.last_request_at)")

def params(rows):
    return {"ids": [uuid.uuid4() for _ in range(rows)], "users": [f"u{i % 7}" for i in range(rows)],
            "ns": [7] * rows, "max_jumps": [2] * rows, "clouds": [clouds] * rows, "jumps": [3] * rows}

def recorded(c, p): c.execute(RECORD_BATCH, p)
def one_row_values(c, p): c.execute(RECORD_ONE, {name: values[0] for name, values in p.items()})
def unprepared(c, p): c.execute(RECORD_BATCH, p, prepare=False)
def text_parameters(c, p): c.execute(TEXT, p)
def pipelined(c, p):
    with c.pipeline():
        c.execute(RECORD_BATCH, p)
def copy_then_upsert(c, p):
    with c.transaction():
        with c.cursor().copy("COPY jump_requests (id, user_name, n, max_jump, clouds, jumps) FROM STDIN") as copy:
            for row in zip(p["ids"], p["users"], p["ns"], p["max_jumps"], p["clouds"], p["jumps"]):
                copy.write_row(row)
        c.execute(STATS, {"users": p["users"]})

def timed(form, rows):  # (CPU of this thread, of the backend, [(sent at, wall s)]) of `seconds` of batches
    with psycopg.connect(url, autocommit=True) as connection:
        pid = connection.info.backend_pid
        for _ in range(20):
            form(connection, params(rows))  # warm: prepared statements, caches
        walls = []
        gc.disable()
        cpu, server = time.thread_time(), cpu_seconds([pid])
        began = time.perf_counter()
        while (sent := time.perf_counter()) - began < seconds:
            form(connection, params(rows))
            walls.append((sent - began, time.perf_counter() - sent))
        cpu, server = time.thread_time() - cpu, cpu_seconds([pid]) - server
        gc.enable()
    return cpu, server, walls

if mode == "trace":
    print(json.dumps([(at, wall * 1000) for at, wall in timed(one_row_values, 1)[2]]))
else:
    result = []
    for name, form in [("the recorder's batch statement (binary arrays, prepared after 5)", recorded),
                       ("the same, never prepared", unprepared), ("the same, text parameters", text_parameters),
                       ("the same, in pipeline mode", pipelined),
                       ("COPY the rows, then upsert the statistics (one transaction)", copy_then_upsert),
                       ("the recorder's statement for a batch of one (binary values, no arrays)", one_row_values)]:
        for rows in (1,) if form is one_row_values else (1, 16):
            cpu, server, walls = timed(form, rows)
            written = len(walls) * rows
            result.append([name, rows, cpu / written * 1e6, server / written * 1e6,
                           statistics.median(wall for _, wall in walls) * 1e6])
    print(json.dumps(result))
"""


def database_trace(database_url: str, seconds: float) -> list[tuple[float, float]]:
    """The one-connection trace without the API: the recorder's statement alone, one row per commit."""
    trace = in_api_env(WRITE_CODE, "trace", database_url, str(seconds), str(Path(__file__).parent))
    return [(at, ms) for at, ms in trace]


def statement_forms(database_url: str, seconds: float) -> list[tuple[str, int, float, float, float]]:
    """The write's candidate forms side by side: (form, rows a batch, client CPU µs a row, PostgreSQL
    CPU µs a row, a batch's median wall µs)."""
    forms = in_api_env(WRITE_CODE, "forms", database_url, str(seconds), str(Path(__file__).parent))
    return [(name, rows, client, server, wall) for name, rows, client, server, wall in forms]
