"""GET /, /healthz, /readyz and the OpenAPI document in process against real PostgreSQL; the schema
the API expects against the migrated one. Metrics and logs across workers:
tests/system/test_observability.py."""

from __future__ import annotations

import re
import subprocess

import httpx
import psycopg
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from jotc_provision import free_port
from openapi_spec_validator import validate
from sqlalchemy import create_engine
from support import fresh_database, in_process, migrate_command

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
    assert "\njotc_ready 1.0\n" in client.get("/metrics").text, "the pod says it answered ready"


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


def test_readyz_is_503_on_an_unmigrated_database_while_healthz_stays_200() -> None:
    with fresh_database(migrate=False) as empty, in_process(empty) as http:
        response = http.get("/readyz")
        assert response.status_code == 503, response.text
        checks = response.json()["checks"]
        assert checks["database"]["status"] == "ok"
        assert checks["schema"]["status"] == "failing"
        assert "jotc-migrate upgrade" in checks["schema"]["detail"]
        assert http.get("/healthz").status_code == 200


def test_readyz_is_503_when_the_database_is_unreachable() -> None:
    with in_process(f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere") as http:
        response = http.get("/readyz")
        assert response.status_code == 503, response.text
        assert response.json()["checks"]["database"]["status"] == "failing"
        assert "\njotc_ready 0.0\n" in http.get("/metrics").text, "scraped while unready, it says so"
        assert http.get("/healthz").status_code == 200
        jumps = http.post("/jumps", json={"clouds": [0, 0]})
        assert jumps.status_code == 503, jumps.text
        assert jumps.headers["retry-after"]


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


def test_every_recorded_user_has_stats(db: psycopg.Connection[tuple[object, ...]]) -> None:
    mismatched = db.execute(
        "SELECT s.user_name FROM user_stats s LEFT JOIN "
        "(SELECT user_name, count(*) AS n FROM jump_requests GROUP BY user_name) r USING (user_name) "
        "WHERE r.n IS DISTINCT FROM s.requests"
    ).fetchall()
    assert mismatched == []
