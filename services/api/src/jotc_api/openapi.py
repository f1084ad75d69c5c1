"""What the OpenAPI document says beyond what Litestar infers from the handlers, and the docs UI.

POST /jumps and POST /jotc read their bodies themselves (two media types, our
own error messages), so their request bodies are declared here; every error
response is declared as problem+json. The docs UI at /schema is Swagger UI,
whose files the API serves itself, so the page works without internet access.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from litestar import Router
from litestar.datastructures import CacheControlHeader
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import OpenAPIMediaType, Operation, Reference, RequestBody, Schema
from litestar.openapi.spec.enums import OpenAPIType
from litestar.static_files import create_static_files_router

from jotc_api.problems import PROBLEM_JSON


class FieldErrorDoc(msgspec.Struct):
    field: str
    message: str


class ProblemDoc(msgspec.Struct, kw_only=True):
    """RFC 9457 problem details; validation problems add `errors`, unreachable adds blocked_at."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldErrorDoc] | None = None
    blocked_at: int | None = None


class JumpAnswer(msgspec.Struct):
    id: str
    jumps: int
    path: list[int]
    n: int
    max_jump: int
    user: str


class JumpRecord(msgspec.Struct):
    id: str
    user: str
    n: int
    max_jump: int
    clouds: list[int]
    jumps: int
    path: list[int]
    created_at: str


class Check(msgspec.Struct, kw_only=True):
    status: str
    detail: str | None = None
    revision: str | None = None


class Readiness(msgspec.Struct):
    """GET /readyz: `ready` or `not ready`, and each check (database, schema, redis)."""

    status: str
    checks: dict[str, Check]


class Move(msgspec.Struct):
    from_: int = msgspec.field(name="from")
    to: int = 0


class JotcAnswer(msgspec.Struct):
    moves: list[Move]
    total: int


def answer_spec(container: type, description: str) -> ResponseSpec:
    return ResponseSpec(data_container=container, description=description, generate_examples=False)


def problem(description: str) -> ResponseSpec:
    return ResponseSpec(
        data_container=ProblemDoc,
        description=description,
        media_type=PROBLEM_JSON,
        generate_examples=False,
    )


CLOUDS_SCHEMA = Schema(
    one_of=[
        Schema(
            type=OpenAPIType.ARRAY,
            items=Schema(type=OpenAPIType.INTEGER, enum=[0, 1]),
            min_items=2,
            description="0 = cumulus (safe), 1 = thunderhead; first and last must be 0",
        ),
        Schema(
            type=OpenAPIType.STRING,
            pattern=r"^\s*[01]([ ,]?[01])+\s*$",
            description='0/1 digits, optionally separated by single spaces or commas: "0010", "0 0 1 0", "0,0,1,0"',
        ),
    ]
)
USER_SCHEMA = Schema(
    type=OpenAPIType.STRING,
    min_length=1,
    max_length=320,
    description='Who asked; trimmed; default "anonymous"',
)


def json_body(properties: dict[str, Schema], example: dict[str, Any]) -> Schema:
    return Schema(
        type=OpenAPIType.OBJECT,
        required=["clouds"],
        properties=properties,  # type: ignore[arg-type]
        additional_properties=False,
        examples=[example],
    )


JUMPS_BODY = RequestBody(
    required=True,
    content={
        "application/json": OpenAPIMediaType(
            schema=json_body(
                {
                    "clouds": CLOUDS_SCHEMA,
                    "user": USER_SCHEMA,
                    "max_jump": Schema(type=OpenAPIType.INTEGER, minimum=1, maximum=1000, default=2),
                },
                {"clouds": [0, 0, 1, 0, 0, 1, 0], "user": "ada@example.com", "max_jump": 2},
            )
        ),
        "text/plain": OpenAPIMediaType(
            schema=Schema(
                type=OpenAPIType.STRING,
                description="HackerRank input: first line n, second line n space-separated "
                "0/1 values. user and max_jump go in the query. Answer: jumps and a newline.",
                examples=["7\n0 0 1 0 0 1 0\n"],
            )
        ),
    },
)

JOTC_BODY = RequestBody(
    required=True,
    content={
        "application/json": OpenAPIMediaType(
            schema=json_body(
                {"clouds": CLOUDS_SCHEMA, "user": USER_SCHEMA},
                {"clouds": [0, 0, 1, 0, 0, 1, 0]},
            )
        )
    },
)


@dataclass
class JumpsOperation(Operation):
    def __post_init__(self) -> None:
        self.request_body = JUMPS_BODY
        # A text/plain request is answered in text/plain: the number of jumps and a newline.
        created = self.responses.get("201") if self.responses else None
        if created is not None and not isinstance(created, Reference) and created.content is not None:
            created.content["text/plain"] = OpenAPIMediaType(
                schema=Schema(type=OpenAPIType.STRING, pattern=r"^[0-9]+\n$", examples=["4\n"])
            )


@dataclass
class JotcOperation(Operation):
    def __post_init__(self) -> None:
        self.request_body = JOTC_BODY


@dataclass
class NoValidationOperation(Operation):
    """Drop Litestar's generic 400 for path parameters: a malformed id is our 404."""

    def __post_init__(self) -> None:
        if self.responses:
            self.responses.pop("400", None)


WRITE_ERRORS = {
    400: problem("Body not parseable: malformed JSON or text, or n not matching the values"),
    413: problem("Body larger than JOTC_MAX_BODY_BYTES"),
    415: problem("Content-Type other than application/json or text/plain"),
    422: problem(
        "A validation rule is broken (errors names each field), or the last cloud is "
        "unreachable (type ends in /unreachable, blocked_at set)"
    ),
    503: problem("PostgreSQL unavailable; nothing was recorded; see Retry-After"),
}


SCHEMA_PATH = "/schema"
DOCS_ASSETS = "/swagger-ui"  # under SCHEMA_PATH


def swagger_ui_files() -> Path:
    """Swagger UI's distribution as drf-spectacular-sidecar ships it. Found without importing the
    package: its __init__ imports Django, which this service leaves out (see pyproject.toml)."""
    spec = importlib.util.find_spec("drf_spectacular_sidecar")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("drf-spectacular-sidecar is not installed; it carries the docs UI's files")
    return Path(spec.submodule_search_locations[0], "static", "drf_spectacular_sidecar", "swagger-ui-dist")


class SelfHostedSwaggerUI(SwaggerRenderPlugin):
    """Swagger UI whose page references only this API's own URLs: script, styles and icon come
    from SCHEMA_PATH + DOCS_ASSETS, which this plugin adds to the OpenAPI router."""

    def __init__(self) -> None:
        assets = SCHEMA_PATH + DOCS_ASSETS
        super().__init__(
            js_url=f"{assets}/swagger-ui-bundle.js",
            css_url=f"{assets}/swagger-ui.css",
            standalone_preset_js_url=f"{assets}/swagger-ui-standalone-preset.js",
            favicon=f"<link rel='icon' type='image/png' href='{assets}/favicon-32x32.png'>",
        )

    def receive_router(self, router: Router) -> None:
        super().receive_router(router)
        router.register(
            create_static_files_router(
                path=DOCS_ASSETS,
                directories=[swagger_ui_files()],
                name="docs-ui-assets",
                cache_control=CacheControlHeader(max_age=86400, public=True),
                include_in_schema=False,
            )
        )
