"""GET /, /healthz, /readyz, /metrics and the OpenAPI document, through the real server."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import httpx
import psycopg
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from conftest import ApiServer, fresh_database, migrate_command, start_api
from openapi_spec_validator import validate
from sqlalchemy import create_engine

from jotc_api.tables import SCHEMA_REVISION, metadata


def test_index_names_the_service_and_its_docs(client: httpx.Client) -> None:
    body = client.get("/").json()
    assert body["service"] == "jotc-api"
    assert body["docs"] == "/schema"
    assert re.fullmatch(r"\d+\.\d+\.\d+", body["version"])


def test_healthz(client: httpx.Client) -> None:
    response = client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_readyz_when_database_and_schema_are_right(client: httpx.Client) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    checks = response.json()["checks"]
    assert checks["database"]["status"] == "ok"
    assert checks["schema"] == {"status": "ok", "revision": SCHEMA_REVISION}
    assert "redis" in checks


def test_build_expects_the_migrations_head() -> None:
    head = subprocess.run([migrate_command(), "head"], capture_output=True, text=True, check=True)
    assert head.stdout.strip() == SCHEMA_REVISION


def test_api_tables_match_the_migrated_schema(database_url: str) -> None:
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, metadata)
    engine.dispose()
    assert differences == []


def test_readyz_is_503_on_an_unmigrated_database_while_healthz_stays_200(tmp_root: Path) -> None:
    with fresh_database(migrate=False) as empty:
        server = start_api(empty, tmp_root, JOTC_WORKERS="1")
        try:
            response = httpx.get(f"{server.base_url}/readyz")
            assert response.status_code == 503
            checks = response.json()["checks"]
            assert checks["database"]["status"] == "ok"
            assert checks["schema"]["status"] == "failing"
            assert "jotc-migrate upgrade" in checks["schema"]["detail"]
            assert httpx.get(f"{server.base_url}/healthz").status_code == 200
        finally:
            server.stop()


def test_readyz_is_503_when_the_database_is_unreachable(tmp_root: Path) -> None:
    server = start_api("postgresql://postgres@127.0.0.1:1/nowhere", tmp_root, JOTC_WORKERS="1")
    try:
        response = httpx.get(f"{server.base_url}/readyz", timeout=10)
        assert response.status_code == 503
        assert response.json()["checks"]["database"]["status"] == "failing"
        assert httpx.get(f"{server.base_url}/healthz").status_code == 200
        jumps = httpx.post(f"{server.base_url}/jumps", json={"clouds": [0, 0]}, timeout=10)
        assert jumps.status_code == 503
        assert jumps.headers["retry-after"]
    finally:
        server.stop()


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def settled_metrics(api: ApiServer) -> str:
    """/metrics once each worker has handed its last second of request counts over (1 s)."""
    time.sleep(1.5)
    return httpx.get(f"{api.base_url}/metrics").text


def test_metrics_count_every_request_across_both_workers(api: ApiServer) -> None:
    before = httpx.get(f"{api.base_url}/metrics").text
    # New connections each time, so Granian spreads them over its two workers.
    for _ in range(40):
        assert httpx.post(f"{api.base_url}/jumps", json={"clouds": [0, 0]}).status_code == 201
    for _ in range(5):
        httpx.post(f"{api.base_url}/jumps", json={"clouds": [0, 2]})
    after = settled_metrics(api)
    counted = metric(after, "jotc_http_requests_total", route="/jumps", status="201") - metric(
        before, "jotc_http_requests_total", route="/jumps", status="201"
    )
    assert counted == 40
    rejected = metric(after, "jotc_http_requests_total", route="/jumps", status="422") - metric(
        before, "jotc_http_requests_total", route="/jumps", status="422"
    )
    assert rejected == 5
    assert metric(after, "jotc_http_request_duration_seconds_count", route="/jumps") >= 45
    rows = metric(after, "jotc_recorder_batch_rows_sum") - metric(before, "jotc_recorder_batch_rows_sum")
    assert rows == 40
    assert metric(after, "jotc_recorder_commit_seconds_count") >= 1


def test_metrics_label_by_route_template_not_raw_path(api: ApiServer) -> None:
    for _ in range(3):
        httpx.get(f"{api.base_url}/jumps/00000000-0000-7000-8000-000000000000")
    text = settled_metrics(api)
    assert "00000000-0000-7000" not in text
    assert metric(text, "jotc_http_requests_total", route="/jumps/{request_id}", status="404") >= 3


def test_openapi_document_is_valid_and_lists_every_route(client: httpx.Client) -> None:
    document = client.get("/schema/openapi.json").json()
    validate(document)
    assert document["openapi"].startswith("3.1")
    paths = document["paths"]
    assert {
        "/jumps",
        "/jumps/{request_id}",
        "/jotc",
        "/",
        "/healthz",
        "/readyz",
        "/metrics",
        "/problems/{kind}",
        "/admin/stats",
        "/admin/requests",
        "/admin/users/{user}/requests",
    } <= set(paths)
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert {"200", "401", "422"} <= set(paths["/admin/stats"]["get"]["responses"])
    jumps = paths["/jumps"]["post"]
    assert set(jumps["requestBody"]["content"]) == {"application/json", "text/plain"}
    assert {"201", "400", "413", "415", "422", "503"} <= set(jumps["responses"])
    assert "application/problem+json" in jumps["responses"]["422"]["content"]
    get_one = paths["/jumps/{request_id}"]["get"]
    assert {"200", "404"} <= set(get_one["responses"])
    assert "400" not in get_one["responses"]


def test_problem_types_are_explained(client: httpx.Client) -> None:
    response = client.get("/problems/unreachable")
    assert response.status_code == 200
    assert "blocked_at" in response.text


def test_access_log_lines_are_json_with_the_request_id(api: ApiServer, client: httpx.Client) -> None:
    client.get("/healthz", headers={"x-request-id": "log-check-42"})
    time.sleep(0.5)  # access lines are written in batches every 0.2 s
    lines = [line for line in api.log().splitlines() if "log-check-42" in line]
    assert lines
    assert '"request_id":"log-check-42"' in lines[0]
    assert '"status":200' in lines[0]


def test_every_recorded_user_has_stats(db: psycopg.Connection[tuple[object, ...]]) -> None:
    mismatched = db.execute(
        "SELECT s.user_name FROM user_stats s LEFT JOIN "
        "(SELECT user_name, count(*) AS n FROM jump_requests GROUP BY user_name) r USING (user_name) "
        "WHERE r.n IS DISTINCT FROM s.requests"
    ).fetchall()
    assert mismatched == []
