"""The baseline for scripts/bench: an ASGI app that answers every request with a fixed JSON body.

It reads the request body like a real handler would, so the comparison with POST /jumps measures
what JOTC adds (parsing, solving, recording, logging, metrics) and nothing else.
"""

BODY = (
    b'{"id":"01930000-0000-7000-8000-000000000000","jumps":4,"path":[0,1,3,4,6],"n":7,"max_jump":2,'
    b'"user":"ada@example.com"}'
)
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope, receive, send):  # type: ignore[no-untyped-def]  # the smallest possible ASGI app
    if scope["type"] != "http":
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 201, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
