"""What the OpenAPI document says beyond what Litestar infers from the handlers, and the docs UI.

The served POST routes read their bodies themselves (two media types, our own
error messages), so their request bodies are documented from the msgspec struct
the parser decodes with (``served_operation``); every error response is
declared as problem+json. The docs UI at /schema is Swagger UI, whose files the
API serves itself, so the page works without internet access.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from litestar import Router
from litestar.datastructures import CacheControlHeader
from litestar.enums import ParamType
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import OpenAPIMediaType, Operation, Parameter, Reference, RequestBody, Schema
from litestar.openapi.spec.enums import OpenAPIType
from litestar.static_files import create_static_files_router

from jotc_api.problems import PROBLEM_JSON, ProblemDocument


def answer_spec(container: type, description: str) -> ResponseSpec:
    return ResponseSpec(data_container=container, description=description, generate_examples=False)


def problem(description: str) -> ResponseSpec:
    return ResponseSpec(
        data_container=ProblemDocument,
        description=description,
        media_type=PROBLEM_JSON,
        generate_examples=False,
    )


def struct_schema(struct: type[msgspec.Struct]) -> Schema:
    """The JSON Schema msgspec makes of a struct (OpenAPI 3.1 speaks JSON Schema), as Litestar's
    Schema: the request body is documented from the very struct the parser decodes with."""
    document = msgspec.json.schema(struct)
    definitions = document.get("$defs", {})

    def convert(node: Any) -> Any:
        if isinstance(node, list):
            return [convert(item) for item in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            return convert(definitions[node["$ref"].rsplit("/", 1)[1]])
        fields: dict[str, Any] = {}
        for key, value in node.items():
            name = SCHEMA_FIELDS.get(key, re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower())
            fields[name] = (
                {prop: convert(child) for prop, child in value.items()} if key == "properties" else convert(value)
            )
        if "type" in fields:
            fields["type"] = OpenAPIType(fields["type"])
        return Schema(**fields)

    schema: Schema = convert(document)
    return schema


SCHEMA_FIELDS = {"$schema": "schema_", "not": "not_"}


def served_operation(body: type[msgspec.Struct], *, text: bool) -> type[Operation]:
    """The OpenAPI operation of a served POST route: its JSON body from ``body``; with ``text``, the
    HackerRank text/plain form too, its query parameters and its text/plain answer."""
    content = {"application/json": OpenAPIMediaType(schema=struct_schema(body))}
    if text:
        content["text/plain"] = OpenAPIMediaType(
            schema=Schema(
                type=OpenAPIType.STRING,
                description="HackerRank input: first line n, second line n space-separated 0/1 values. "
                "user and max_jump go in the query. Answer: the number of jumps and a newline.",
                pattern=r"^\s*[0-9]+\s*\n\s*[01]( +[01])*\s*$",
                examples=["7\n0 0 1 0 0 1 0\n"],
            )
        )
    request_body = RequestBody(required=True, content=content)
    fields = struct_schema(body).properties or {}
    parameters = [IDEMPOTENCY_KEY]
    if text:
        parameters += [
            Parameter(
                name=name,
                param_in=ParamType.QUERY,
                required=False,
                schema=fields[name],
                description=f"text/plain requests only (JSON requests put {name} in the body)",
            )
            for name in ("user", "max_jump")
        ]

    @dataclass
    class ServedOperation(Operation):
        def __post_init__(self) -> None:
            self.request_body = request_body
            self.parameters = [*(self.parameters or []), *parameters]
            answered = next((r for code, r in (self.responses or {}).items() if code.startswith("2")), None)
            if text and answered is not None and not isinstance(answered, Reference) and answered.content:
                answered.content["text/plain"] = OpenAPIMediaType(
                    schema=Schema(type=OpenAPIType.STRING, pattern=r"^[0-9]+\n$", examples=["4\n"])
                )

    return ServedOperation


@dataclass
class NoValidationOperation(Operation):
    """Drop Litestar's generic 400 for path parameters: a malformed id is our 404."""

    def __post_init__(self) -> None:
        if self.responses:
            self.responses.pop("400", None)


IDEMPOTENCY_KEY = Parameter(
    name="Idempotency-Key",
    param_in=ParamType.HEADER,
    required=False,
    schema=Schema(type=OpenAPIType.STRING, min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$"),
    description="Process this request once: a repeat with the same key and request gets the first answer "
    "(Idempotent-Replayed: true) for 24 h; needs Redis",
)
WRITE_ERRORS = {
    400: problem("Body not parseable: malformed JSON or text, n not matching the values, or a body cut short"),
    408: problem("The body did not arrive within JOTC_BODY_READ_TIMEOUT; the connection is closed"),
    409: problem("The first request with this Idempotency-Key is still in flight; see Retry-After"),
    410: problem("This Idempotency-Key's request was recorded, then erased"),
    411: problem("A Transfer-Encoding header: a body is framed by Content-Length alone; the connection is closed"),
    413: problem("Body larger than JOTC_MAX_BODY_BYTES"),
    415: problem("A Content-Type, charset or Content-Encoding this route does not accept (see its request body)"),
    422: problem(
        "A validation rule is broken (errors names each field), the last cloud is unreachable (type ends in "
        "/unreachable, blocked_at set), or an Idempotency-Key is reused with a different request"
    ),
    429: problem("Rate limit spent (JOTC_RATE_LIMIT); see Retry-After and RateLimit-*"),
    503: problem(
        "PostgreSQL unavailable, too many requests waiting for it or too many bodies being received, or "
        "Idempotency-Key sent while Redis is unavailable; nothing was recorded; see Retry-After"
    ),
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
