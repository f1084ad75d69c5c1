"""A worker's memory budget: what requests may hold at once, charged before they hold it.

A worker's memory is its own footprint (interpreter, libraries, pools: ``WORKER_BASELINE``) plus
what the requests in flight hold: bodies being received, parsed inputs, solutions and answers
on their way out, rows waiting for the recorder. The second part is bounded by design: before a
served route reads a body it charges the most that body can cost (``body_cost``, from its
Content-Length), and GET /jumps/{id} and admin listings charge their clouds before they rebuild
answers (``clouds_cost``). The charge stays until the answer has gone out (the response pipeline
gives it back). One client may hold at most its share of ``JOTC_REQUEST_MEMORY``
(``JOTC_UPLOAD_SHARE_PERCENT``; past it, a client waits for its own). A charge that does not fit waits, first
come first served, for up to CHARGE_WAIT_SECONDS while nothing of its body is read (it stays in
the kernel's buffers, not in the worker), then is refused with 503 ``overloaded``: a crowd of the
largest bodies is served as fast as memory allows and the rest get 503s, never an out-of-memory
kill. Small requests charge little, so they keep being served beside it.

The costs are upper bounds of what tracemalloc measures (docs/reliability.md has the figures),
and a body of L bytes holds at most L clouds (the digit-string form spends one byte a cloud). At
start-up ``plan_request_memory`` sizes the budget from the memory each worker is given
(JOTC_WORKER_MEMORY, else the container's limit, less what its main process and sockets need,
divided among the workers) and refuses settings it cannot hold; the chart checks the same at
render time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Final

from litestar.types import Scope

from jotc_api.clients import Clients
from jotc_api.deadline import Deadline
from jotc_api.problems import client_memory_full, memory_full

MIB: Final = 1024 * 1024
PER_CLOUD: Final = 96  # bytes, at a request's peak (measured ≤ 85: POST /jotc's moves)
SMALL_BODY: Final = 256  # bytes: bodies up to this are covered by small_allowance, not charged
PER_REQUEST: Final = 16 * 1024  # what any request holds besides its clouds: scope, headers, answer
DEFAULT_REQUEST_MEMORY: Final = 128 * MIB  # JOTC_REQUEST_MEMORY unless the worker is given less
CONTAINER_RESERVE: Final = 64 * MIB  # of a container's limit: Granian's main process, socket buffers
WORKER_BASELINE: Final = 160 * MIB  # a worker's own footprint under load (measured ~115 MiB idle)
CHARGE_WAIT_SECONDS: Final = 2.0  # the most a request waits for memory before its 503
HELD_KEY: Final = "jotc.memory"  # the scope key of a request's charge, given back by the pipeline


def body_cost(length: int, max_clouds: int) -> int:
    """The most a request whose body is ``length`` bytes can hold (-1: no body)."""
    length = max(length, 0)
    return length + PER_CLOUD * min(length, max_clouds) + PER_REQUEST


def small_allowance(backpressure: int, max_clouds: int) -> int:
    """What requests with bodies of at most SMALL_BODY bytes can hold together: the server never
    has more than ``backpressure`` requests in flight in a worker, so this much of the budget is
    set aside for them and they are not charged one by one (the usual request costs no
    bookkeeping)."""
    return backpressure * body_cost(SMALL_BODY, max_clouds)


def clouds_cost(n: int) -> int:
    """The most a request that rebuilds the answer of a recorded input of n clouds can hold."""
    return PER_CLOUD * n + PER_REQUEST


class Held:
    """What one request has charged; given back once, when its answer has gone out."""

    __slots__ = ("budget", "client", "cost")

    def __init__(self, budget: MemoryBudget, client: str, cost: int) -> None:
        self.budget = budget
        self.client = client
        self.cost = cost

    def give_back(self) -> None:
        cost, self.cost = self.cost, 0
        if cost:
            self.budget.release(self.client, cost)


class MemoryBudget:
    """``limit`` bytes for the requests a worker has in flight, of which one client (clients.py)
    holds at most ``client_share`` (a request of its own always fits): a client past its share
    waits in a line of its own for its own charges to be given back, so no client can fill the
    budget and make everyone else wait. Charges that do not fit the worker's budget wait in one
    line, and memory given back goes to the first of them straight away (so a newcomer cannot take
    it in between and a large charge is never passed over for ever). Both lines are bounded by the
    upload slots their requests hold while they wait (transport.py)."""

    __slots__ = ("by_client", "client_limit", "client_lines", "clients", "held", "limit", "wait_seconds", "waiting")

    def __init__(
        self,
        limit: int,
        clients: Clients | None = None,
        client_share: float = 1.0,
        wait_seconds: float = CHARGE_WAIT_SECONDS,
    ) -> None:
        self.limit = limit
        self.clients = clients or Clients(())
        self.client_limit = int(limit * client_share)
        self.held = 0
        self.wait_seconds = wait_seconds
        self.waiting: deque[tuple[int, asyncio.Future[None]]] = deque()
        self.by_client: dict[str, int] = {}  # charged or waiting for the worker's memory, per client
        self.client_lines: dict[str, deque[tuple[int, asyncio.Future[None]]]] = {}

    def charge_now(self, scope: Scope, cost: int, client: str) -> bool:
        """The charge, when it fits the client's share and the budget with no one waiting (the
        usual case, without a coroutine): True. False: nothing was charged, ``charge`` decides."""
        mine = self.by_client.get(client, 0)
        if (
            (mine and mine + cost > self.client_limit)
            or self.held + cost > self.limit
            or self.waiting
            or client in self.client_lines
        ):
            return False
        self.by_client[client] = mine + cost
        self.held += cost
        if HELD_KEY in scope:
            scope[HELD_KEY].cost += cost  # type: ignore[typeddict-item]
        else:
            scope[HELD_KEY] = Held(self, client, cost)  # type: ignore[typeddict-unknown-key]
        return True

    async def charge(self, scope: Scope, cost: int, *, client: str | None = None, wait: bool = True) -> None:
        """Charge the request ``cost`` bytes until its answer has gone out; 503 if they do not fit
        within ``wait_seconds``. ``wait=False``: 503 at once instead, for a request that holds no
        upload slot while it would wait (nothing else would bound how many wait)."""
        client = self.clients.of(scope) if client is None else client
        if self.charge_now(scope, cost, client):
            return
        await self.client_turn(client, cost, wait)
        try:
            if self.held + cost <= self.limit and not self.waiting:
                self.held += cost
            elif wait:
                await self.wait_for(cost)
            else:
                raise memory_full()
        except BaseException:
            self.forget(client, cost)
            raise
        self.hold(scope, client, cost)

    def hold(self, scope: Scope, client: str, cost: int) -> None:
        """Note the charge on the request, for the pipeline to give back."""
        held: Held | None = scope.get(HELD_KEY)  # type: ignore[assignment]
        if held is None:
            scope[HELD_KEY] = Held(self, client, cost)  # type: ignore[typeddict-unknown-key]
        else:
            held.cost += cost

    async def client_turn(self, client: str, cost: int, wait: bool) -> None:
        """Count ``cost`` against the client's share: at once while it fits (a client holding
        nothing always fits), else after the client's own charges make room, in its own line, so
        a client past its share waits for itself and holds up no one else."""
        mine = self.by_client.get(client, 0)
        if (not mine or mine + cost <= self.client_limit) and client not in self.client_lines:
            self.by_client[client] = mine + cost
            return
        if not wait:
            raise client_memory_full()
        turn = asyncio.get_running_loop().create_future()
        entry = (cost, turn)
        self.client_lines.setdefault(client, deque()).append(entry)
        try:
            with Deadline(self.wait_seconds):
                await turn
        except BaseException as error:
            if turn.done() and not turn.cancelled():
                self.forget(client, cost)  # its turn came just as the wait ended: passed on
            else:
                line = self.client_lines.get(client)
                if line is not None:
                    with contextlib.suppress(ValueError):
                        line.remove(entry)
                self.next_turn(client)
            if isinstance(error, TimeoutError):
                raise client_memory_full() from None
            raise

    def next_turn(self, client: str) -> None:
        """The client's waiting charges, in order, while the first fits its share."""
        line = self.client_lines.get(client)
        while line:
            cost, turn = line[0]
            if turn.done():  # its request gave up waiting
                line.popleft()
                continue
            mine = self.by_client.get(client, 0)
            if mine and mine + cost > self.client_limit:
                return
            line.popleft()
            self.by_client[client] = mine + cost
            turn.set_result(None)
        if line is not None:
            del self.client_lines[client]

    def forget(self, client: str, cost: int) -> None:
        if not cost:
            return
        left = self.by_client[client] - cost
        if left:
            self.by_client[client] = left
        else:
            del self.by_client[client]
        if client in self.client_lines:
            self.next_turn(client)

    async def wait_for(self, cost: int) -> None:
        if cost > self.limit:
            raise memory_full()
        granted = asyncio.get_running_loop().create_future()
        entry = (cost, granted)
        self.waiting.append(entry)
        try:
            with Deadline(self.wait_seconds):
                await granted
        except BaseException as error:
            if granted.done() and not granted.cancelled():
                self.held -= cost  # granted just as the wait ended: given back
                self.grant()
            else:
                with contextlib.suppress(ValueError):
                    self.waiting.remove(entry)
                self.grant()  # this charge may have stood first in line
            if isinstance(error, TimeoutError):
                raise memory_full() from None
            raise

    def release(self, client: str, cost: int) -> None:
        self.held -= cost
        left = self.by_client[client] - cost
        if left:
            self.by_client[client] = left
        else:
            del self.by_client[client]
        if self.client_lines and client in self.client_lines:
            self.next_turn(client)
        if self.waiting:
            self.grant()

    def grant(self) -> None:
        """Memory to the waiting charges, in order, while the first in line fits."""
        while self.waiting:
            cost, granted = self.waiting[0]
            if granted.done():  # its request gave up waiting
                self.waiting.popleft()
                continue
            if self.held + cost > self.limit:
                return
            self.waiting.popleft()
            self.held += cost
            granted.set_result(None)


def give_back(scope: Scope) -> None:
    """The response pipeline's part: the request's charge is free again."""
    held: Held | None = scope.get(HELD_KEY)  # type: ignore[assignment]
    if held is not None:
        held.give_back()


class BudgetError(ValueError):
    """The memory a worker is given cannot hold what its settings let requests take (one line)."""


def plan_request_memory(
    *,
    request_memory: int | None,
    max_body_bytes: int,
    max_clouds: int,
    backpressure: int,
    worker_memory: int | None,
    workers: int,
) -> int:
    """The bytes a worker's requests may hold (JOTC_REQUEST_MEMORY): as set, else the default
    or, when the worker is given less, what its memory leaves after its own footprint. Raises
    BudgetError when that is more than the worker is given, or less than the small bodies'
    allowance plus one request of the largest body."""
    needs = small_allowance(backpressure, max_clouds) + body_cost(max_body_bytes, max_clouds)
    left = None if worker_memory is None else worker_memory - WORKER_BASELINE
    given = f"each of {workers} worker(s) is given {(worker_memory or 0) // MIB}Mi"
    if request_memory is None:
        request_memory = DEFAULT_REQUEST_MEMORY if left is None else min(DEFAULT_REQUEST_MEMORY, left)
    elif left is not None and request_memory > left:
        raise BudgetError(
            f"{given} but needs {(WORKER_BASELINE + request_memory) // MIB}Mi ({WORKER_BASELINE // MIB}Mi of its "
            f"own + JOTC_REQUEST_MEMORY {request_memory // MIB}Mi): raise the memory limit (or JOTC_WORKER_MEMORY), "
            "or lower JOTC_WORKERS or JOTC_REQUEST_MEMORY"
        )
    if request_memory < needs:
        what = (
            f"JOTC_REQUEST_MEMORY ({request_memory // MIB}Mi)"
            if left is None or request_memory < left
            else f"{given}, which leaves {max(left, 0) // MIB}Mi after its own {WORKER_BASELINE // MIB}Mi: that"
        )
        raise BudgetError(
            f"{what} cannot hold the small bodies' allowance and one request of the largest body "
            f"(JOTC_MAX_BODY_BYTES {max_body_bytes}, JOTC_MAX_CLOUDS {max_clouds}: {-(-needs // MIB)}Mi); "
            "give workers more memory or lower those limits"
        )
    return request_memory
