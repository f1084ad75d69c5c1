"""POST /jumps, POST /jotc and GET /jumps/{id}: each route declared once, here.

A ``served_post`` declaration is the whole route: Litestar routes it and
documents it (request body from the struct the parser decodes with, answers
from the structs that are encoded), and the fast path (transport.py) derives
its table from these same declarations at start-up. Both transports call the
declared ``serve`` function; jumps.py holds the work itself.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath

from jotc_api.jumps import (
    JotcAnswer,
    JumpAnswer,
    JumpRecord,
    answer_jotc,
    answer_jumps,
    json_only,
    json_or_text,
    read_jump,
    replay_jotc,
    replay_jumps,
    serve,
)
from jotc_api.openapi import WRITE_ERRORS, NoValidationOperation, answer_spec, problem, served_operation
from jotc_api.parsing import JotcBody, JumpsBody
from jotc_api.transport import SERVED, Answer, Replay, ServedRoute, receive_and_serve


async def through_litestar(request: Request[Any, Any, Any]) -> Response[bytes]:
    """A served route's answer when Litestar itself routes the request (no fast path in front)."""
    served: ServedRoute = request.route_handler.opt[SERVED]
    reply = await receive_and_serve(request.app.state, served, request.scope, request.receive)
    return Response(reply.body, status_code=reply.status, media_type=reply.media_type, headers=reply.extra_headers())


def served_post(
    path: str,
    *,
    answer_with: Answer,
    replay_with: Replay,
    check: Callable[[str], str],
    body: type[msgspec.Struct],
    text: bool,
    answer: type[msgspec.Struct],
    status_code: int,
    summary: str,
    description: str | None = None,
) -> HTTPRouteHandler:
    handler: HTTPRouteHandler = post(
        path,
        name=path.strip("/"),
        opt={SERVED: ServedRoute(path, check, answer_with, replay_with, serve)},
        operation_class=served_operation(body, text=text),
        summary=summary,
        description=description,
        responses={status_code: answer_spec(answer, "Solved and recorded"), **WRITE_ERRORS},
        status_code=status_code,
        tags=["jumps"],
    )(through_litestar)
    return handler


post_jumps = served_post(
    "/jumps",
    answer_with=answer_jumps,
    replay_with=replay_jumps,
    check=json_or_text,
    body=JumpsBody,
    text=True,
    answer=JumpAnswer,
    status_code=201,
    summary="Solve and record",
    description="Solves the game and records the request; 201 only after the row is committed. "
    "Send JSON, or text/plain in HackerRank's input format (user and max_jump in the query; "
    "the answer is then the number of jumps as text).",
)

post_jotc = served_post(
    "/jotc",
    answer_with=answer_jotc,
    replay_with=replay_jotc,
    check=json_only,
    body=JotcBody,
    text=False,
    answer=JotcAnswer,
    status_code=200,
    summary="Solve and record, in the original PHP service's answer shape",
)


@get(
    "/jumps/{request_id:str}",
    operation_class=NoValidationOperation,
    summary="Read a recorded request",
    responses={
        404: problem("No such request, it was deleted, or the id is not a UUID"),
        503: problem("PostgreSQL unavailable"),
    },
    tags=["jumps"],
)
async def get_jump(request: Request[Any, Any, Any], request_id: FromPath[str]) -> JumpRecord:
    state = request.app.state
    charge = partial(state.memory.charge, request.scope, wait=False)
    return await read_jump(state.engine, request_id, state.settings.offload_from, charge)
