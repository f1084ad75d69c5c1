"""The baseline for scripts/bench: an ASGI app that answers every request with a fixed JSON body.

It reads the request body like a real handler would, so the comparison with POST /jumps measures
what JOTC adds (parsing, solving, recording, logging, metrics) and nothing else.
"""

import asyncio

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


# What Granian costs for a request that waits, as POST /jumps waits for its batch's commit: each
# request hands a future to one task per worker, which resolves everything queued after a pause
# standing in for the commit. It reads its body as the API does (up to Content-Length, without the
# server's closing message), so the two pay Granian for the same hand-overs. scripts/bench --floor
# measures it beside app.
COMMIT_SECONDS = 0.0008


class Batches:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[asyncio.Future[None]] | None = None

    async def run(self) -> None:
        assert self.queue is not None
        while True:
            batch = [await self.queue.get()]
            while not self.queue.empty():
                batch.append(self.queue.get_nowait())
            await asyncio.sleep(COMMIT_SECONDS)
            for waiting in batch:
                if not waiting.done():  # its client may have left
                    waiting.set_result(None)


BATCHES = Batches()


async def waiting(scope, receive, send):  # type: ignore[no-untyped-def]  # app, holding each answer for a batch
    if scope["type"] == "lifespan":
        BATCHES.queue = asyncio.Queue()
        writer = asyncio.get_running_loop().create_task(BATCHES.run())
        await app(scope, receive, send)  # type: ignore[no-untyped-call]  # its lifespan
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        return
    if scope["type"] != "http":
        return
    # Unlike app's loop, which is the baseline's and stays as a typical ASGI app reads: up to the
    # declared length, as the API reads.
    length = next((int(value) for name, value in scope["headers"] if name == b"content-length"), -1)
    received, more = 0, True
    while more and received != length:
        message = await receive()
        received += len(message.get("body", b""))
        more = message.get("more_body", False)
    assert BATCHES.queue is not None
    done = asyncio.get_running_loop().create_future()
    BATCHES.queue.put_nowait(done)
    await done
    await send({"type": "http.response.start", "status": 201, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
