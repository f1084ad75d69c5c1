"""The OpenAPI document is generated, complete and true: it and the real parser agree."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from support import in_process

from jotc_api.problems import KINDS

API_DOCS = Path(__file__).parents[4] / "docs" / "api.md"

REFUSED_BODIES: list[Any] = [
    {"clouds": [0, 2, 0]},
    {"clouds": [0, True, 0]},
    {"clouds": [1, 0, 0]},
    {"clouds": [0]},
    {"clouds": []},
    {"clouds": "0"},
    {"clouds": ""},
    {"clouds": "0 2 0"},
    {"clouds": "0  0"},
    {"clouds": "0 0,0"},
    {"clouds": "00 0"},
    {"clouds": "10"},
    {"clouds": "0,1"},
    {"clouds": {"a": 1}},
    {"clouds": 7},
    {"clouds": None},
    {"user": "ada"},
    {"clouds": [0, 0], "user": ""},
    {"clouds": [0, 0], "user": "   "},
    {"clouds": [0, 0], "user": 5},
    {"clouds": [0, 0], "user": "nul\u0000byte"},
    {"clouds": [0, 0], "max_jump": 0},
    {"clouds": [0, 0], "max_jump": 1001},
    {"clouds": [0, 0], "max_jump": "2"},
    {"clouds": [0, 0], "cloud": [0, 0]},
]
ACCEPTED_BODIES: list[Any] = [
    {"clouds": [0, 0]},
    {"clouds": "0010010"},
    {"clouds": " 0 0 1 0 "},
    {"clouds": "0,0,1,0"},
    {"clouds": [0, 1, 0], "user": " ada ", "max_jump": 2},
]


@pytest.fixture(scope="module")
def api(database_url: str) -> Iterator[Any]:
    token = "openapi-test-token-of-32-characters-or-more"  # pragma: allowlist secret
    with in_process(database_url, JOTC_ADMIN_TOKEN=token) as client:
        yield client


@pytest.fixture(scope="module")
def document(api: Any) -> dict[str, Any]:
    answer = api.get("/schema/openapi.json")
    assert answer.status_code == 200
    parsed: dict[str, Any] = answer.json()
    return parsed


def body_schema(document: dict[str, Any], path: str, media_type: str = "application/json") -> dict[str, Any]:
    schema: dict[str, Any] = document["paths"][path]["post"]["requestBody"]["content"][media_type]["schema"]
    return schema


@pytest.mark.parametrize("body", ACCEPTED_BODIES, ids=json.dumps)
def test_bodies_the_parser_accepts_match_the_schema(api: Any, document: dict[str, Any], body: Any) -> None:
    assert api.post("/jumps", json=body).status_code == 201
    jsonschema.validate(body, body_schema(document, "/jumps"))


@pytest.mark.parametrize("body", REFUSED_BODIES, ids=json.dumps)
def test_bodies_the_parser_refuses_are_refused_by_the_schema(api: Any, document: dict[str, Any], body: Any) -> None:
    assert api.post("/jumps", json=body).status_code == 422
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(body, body_schema(document, "/jumps"))


def examples(document: dict[str, Any]) -> Iterator[tuple[str, str, Any]]:
    for path, operations in document["paths"].items():
        body = operations.get("post", {}).get("requestBody", {})
        for media_type, content in body.get("content", {}).items():
            for example in content.get("schema", {}).get("examples", []) + list(content.get("examples", {}).values()):
                yield path, media_type, example


def test_every_request_example_in_the_document_is_accepted(api: Any, document: dict[str, Any]) -> None:
    found = list(examples(document))
    assert {media_type for _, media_type, _ in found} >= {"text/plain"}
    for path, media_type, example in found:
        content = example.encode() if isinstance(example, str) else json.dumps(example).encode()
        answer = api.post(path, content=content, headers={"content-type": media_type})
        assert answer.status_code in {200, 201}, (path, media_type, example, answer.text)


def test_jotc_takes_no_max_jump_and_no_text(api: Any, document: dict[str, Any]) -> None:
    operation = document["paths"]["/jotc"]["post"]
    assert set(operation["requestBody"]["content"]) == {"application/json"}
    assert "max_jump" not in body_schema(document, "/jotc")["properties"]
    assert "text/plain" not in operation["responses"]["415"]["description"]
    assert api.post("/jotc", json={"clouds": [0, 0], "max_jump": 2}).status_code == 422


def test_text_plain_query_parameters_and_the_idempotency_key_are_documented(document: dict[str, Any]) -> None:
    parameters = document["paths"]["/jumps"]["post"]["parameters"]
    assert {p["name"] for p in parameters if p["in"] == "query"} == {"user", "max_jump"}
    assert {p["name"] for p in parameters if p["in"] == "header"} == {"Idempotency-Key"}
    jotc = document["paths"]["/jotc"]["post"]["parameters"]
    assert [p["name"] for p in jotc] == ["Idempotency-Key"]


@pytest.mark.parametrize("path", ["/jumps", "/jotc"])
def test_every_answer_of_the_write_routes_is_documented(document: dict[str, Any], path: str) -> None:
    assert {"400", "408", "409", "410", "413", "415", "422", "429", "503"} <= set(
        document["paths"][path]["post"]["responses"]
    )


def test_admin_query_parameters_are_documented(document: dict[str, Any]) -> None:
    def names(path: str) -> set[str]:
        return {parameter["name"] for parameter in document["paths"][path]["get"]["parameters"]}

    assert names("/admin/stats") == {"limit", "cursor", "sort", "order"}
    assert names("/admin/requests") == {"user", "since", "until", "limit", "cursor"}


def test_metrics_are_documented_as_text(document: dict[str, Any]) -> None:
    content = document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert all(media_type.startswith("text/plain") for media_type in content)


def test_every_problem_kind_is_served(api: Any) -> None:
    for kind in KINDS:
        assert api.get(f"/problems/{kind}").status_code == 200


def test_json_answers_match_their_declared_schemas(api: Any, document: dict[str, Any]) -> None:
    """Every JSON answer, success or problem, is what its route declares: valid against the schema
    and with no member the schema leaves out (answers are encoded from the declared structs)."""
    created = api.post("/jumps", json={"clouds": [0, 0, 1, 0]})
    missing = "/jumps/00000000-0000-7000-8000-000000000000"
    for answer, path, method in (
        (created, "/jumps", "post"),
        (api.get(created.headers["location"]), "/jumps/{request_id}", "get"),
        (api.post("/jotc", json={"clouds": [0, 0]}), "/jotc", "post"),
        (api.get("/healthz"), "/healthz", "get"),
        (api.get("/readyz"), "/readyz", "get"),
        (api.post("/jumps", json={"clouds": [0, 2], "user": ""}), "/jumps", "post"),  # 422 validation
        (api.post("/jumps", json={"clouds": [0, 1, 1, 0]}), "/jumps", "post"),  # 422 unreachable
        (api.post("/jumps", content=b"{", headers={"content-type": "application/json"}), "/jumps", "post"),
        (api.get(missing), "/jumps/{request_id}", "get"),  # 404
    ):
        declared = document["paths"][path][method]["responses"][str(answer.status_code)]["content"]
        schema = next(iter(declared.values()))["schema"]
        # "#/components/..." references resolve inside the schema once the components sit beside it.
        components = document.get("components", {})
        jsonschema.validate(answer.json(), {**schema, "components": components})
        assert_no_undeclared_member(answer.json(), schema, components, f"{method.upper()} {path} {answer.status_code}")


def assert_no_undeclared_member(value: Any, schema: dict[str, Any], components: dict[str, Any], where: str) -> None:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        schema = components["schemas"][name]
    for option in schema.get("oneOf", []) + schema.get("anyOf", []):
        if option.get("type") == "object" or "$ref" in option or "properties" in option:
            assert_no_undeclared_member(value, option, components, where)
    if isinstance(value, dict) and "properties" in schema:
        undeclared = set(value) - set(schema["properties"])
        assert not undeclared, f"{where} answers {sorted(undeclared)}, which its schema does not declare"
        for key, member in value.items():
            assert_no_undeclared_member(member, schema["properties"][key], components, f"{where} .{key}")
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, member in value.items():
            assert_no_undeclared_member(member, schema["additionalProperties"], components, f"{where} .{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for member in value:
            assert_no_undeclared_member(member, schema["items"], components, f"{where}[]")


def test_every_problem_kind_and_its_status_is_in_the_api_docs() -> None:
    """docs/api.md's table of problem kinds lists each kind once, with the status KINDS sends it with."""
    rows = re.findall(r"^\| (\d{3}) \| `([a-z-]+)` \|", API_DOCS.read_text(), flags=re.MULTILINE)
    documented = {kind: int(status) for status, kind in rows}
    assert len(rows) == len(documented), "a kind has two rows in docs/api.md"
    assert documented == {kind: entry.status for kind, entry in KINDS.items()}


def test_a_write_route_declares_each_status_of_its_problems(document: dict[str, Any]) -> None:
    statuses = {str(entry.status) for entry in KINDS.values()} - {"401", "404", "405", "500"}  # not a write's
    for path in ("/jumps", "/jotc"):
        declared = set(document["paths"][path]["post"]["responses"])
        assert statuses <= declared, f"POST {path} does not declare {sorted(statuses - declared)}"
