"""POST /jumps, POST /jotc and GET /jumps/{id}: each route declared once, here.

A ``served_post`` declaration is the whole route: Litestar routes it and documents it (request
body from the struct the parser decodes with, answers from the structs that are encoded), and
the fast path (served.py) reads its table from these same declarations at start-up. Both
transports run the declared ``answer`` through ``receive_and_serve``; jumps.py holds the work.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

import msgspec
from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath

from jotc_api.jumps import (
    JotcAnswer,
    JumpAnswer,
    JumpRecord,
    answer_jotc,
    answer_jumps,
    read_jump,
    replay_jotc,
    replay_jumps,
)
from jotc_api.openapi import WRITE_ERRORS, NoValidationOperation, answer_spec, problem, served_operation
from jotc_api.parsing import JotcBody, JumpsBody
from jotc_api.served import SERVED, ServedRoute, receive_and_serve
from jotc_api.services import Services, services_of
from jotc_api.transport import Incoming, Reply


async def through_litestar(request: Request[None, None, State]) -> Response[bytes]:
    """A served route's answer when Litestar itself routes the request (no fast path in front)."""
    served: ServedRoute = request.route_handler.opt[SERVED]
    reply = await receive_and_serve(services_of(request.app), served, request.scope, request.receive)
    return Response(reply.body, status_code=reply.status, media_type=reply.media_type, headers=reply.extra_headers())


def served_post(
    path: str,
    *,
    answer: Callable[[Services, Incoming], Awaitable[Reply]],
    replay: Callable[[Services, str, str], Awaitable[Reply]],
    body: type[msgspec.Struct],
    text: bool,
    answer_struct: type[msgspec.Struct],
    status_code: int,
    summary: str,
    description: str | None = None,
) -> HTTPRouteHandler:
    """A POST route served from the raw request: ``answer`` does its work and ``replay`` rebuilds
    a kept answer (served.py); ``body`` is the JSON request struct, ``text`` whether text/plain
    is accepted too, ``answer_struct`` what a success encodes."""
    handler: HTTPRouteHandler = post(
        path,
        name=path.strip("/"),
        opt={SERVED: ServedRoute(path, answer, replay, text)},
        operation_class=served_operation(body, text=text),
        summary=summary,
        description=description,
        responses={status_code: answer_spec(answer_struct, "Solved and recorded"), **WRITE_ERRORS},
        status_code=status_code,
        tags=["jumps"],
    )(through_litestar)
    return handler


post_jumps = served_post(
    "/jumps",
    answer=answer_jumps,
    replay=replay_jumps,
    body=JumpsBody,
    text=True,
    answer_struct=JumpAnswer,
    status_code=201,
    summary="Solve and record",
    description="Solves the game and records the request; 201 only after the row is committed. "
    "Send JSON, or text/plain in HackerRank's input format (user and max_jump in the query; "
    "the answer is then the number of jumps as text).",
)

post_jotc = served_post(
    "/jotc",
    answer=answer_jotc,
    replay=replay_jotc,
    body=JotcBody,
    text=False,
    answer_struct=JotcAnswer,
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
async def get_jump(request: Request[None, None, State], request_id: FromPath[str]) -> JumpRecord:
    services = services_of(request.app)
    charge = partial(services.memory.charge, request.scope, wait=False)
    return await read_jump(services.engine, request_id, services.settings.offload_from, charge)
