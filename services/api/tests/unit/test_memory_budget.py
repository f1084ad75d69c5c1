"""memory.py: what a request is charged, how charges wait in line and are refused, and the start-up
arithmetic against the memory a worker is given; server.py's reading of the container's limit."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from jotc_api import server
from jotc_api.memory import (
    DEFAULT_REQUEST_MEMORY,
    HELD_KEY,
    MIB,
    PER_CLOUD,
    WORKER_BASELINE,
    BudgetError,
    MemoryBudget,
    body_cost,
    clouds_cost,
    give_back,
    plan_request_memory,
)
from jotc_api.problems import Problem
from jotc_api.settings import SettingsError, load_settings

Scope = dict[str, Any]
CLIENTS = iter(range(1, 1_000_000))


def client() -> Scope:
    """A request from a client of its own."""
    return {"client": (f"10.0.{next(CLIENTS) // 250}.{next(CLIENTS) % 250}", 50000), "headers": []}


def test_a_body_costs_at_most_one_cloud_a_byte_and_never_more_clouds_than_allowed() -> None:
    assert body_cost(1000, 100_000) == 1000 + PER_CLOUD * 1000 + body_cost(0, 0)
    assert body_cost(1_000_000, 100) == 1_000_000 + PER_CLOUD * 100 + body_cost(0, 0)
    assert body_cost(-1, 100) == body_cost(0, 100), "no Content-Length: no body"
    assert clouds_cost(100_000) > body_cost(0, 0)


async def test_charges_that_fit_are_held_until_the_answer_is_out() -> None:
    budget = MemoryBudget(100)
    scope: Scope = client()
    await budget.charge(scope, 60)  # type: ignore[arg-type]
    await budget.charge(scope, 30)  # type: ignore[arg-type]
    assert (budget.held, scope[HELD_KEY].cost) == (90, 90), "one request's charges add up"
    give_back(scope)  # type: ignore[arg-type]
    give_back(scope)  # type: ignore[arg-type]
    assert budget.held == 0, "given back once, however often the pipeline asks"
    give_back({})  # type: ignore[arg-type]  # a request that charged nothing


async def test_a_charge_that_does_not_fit_waits_and_gets_the_memory_given_back_first() -> None:
    budget = MemoryBudget(100, wait_seconds=30)
    first: Scope = client()
    await budget.charge(first, 80)  # type: ignore[arg-type]
    waiting: Scope = client()
    waiter = asyncio.create_task(budget.charge(waiting, 50))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    assert not waiter.done()
    assert len(budget.waiting) == 1
    newcomer: Scope = client()
    late = asyncio.create_task(budget.charge(newcomer, 20))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    assert not late.done(), "fits now, but the line comes first"
    give_back(first)  # type: ignore[arg-type]
    await asyncio.wait_for(asyncio.gather(waiter, late), 5)
    assert budget.held == 70
    assert not budget.waiting


async def test_a_charge_that_waits_too_long_is_refused_and_leaves_the_line() -> None:
    budget = MemoryBudget(100, wait_seconds=0.01)
    await budget.charge(client(), 100)  # type: ignore[arg-type]
    with pytest.raises(Problem) as refused:
        await budget.charge(client(), 1)  # type: ignore[arg-type]
    assert (refused.value.status, refused.value.kind) == (503, "overloaded")
    assert refused.value.headers["Connection"] == "close"
    assert not budget.waiting
    assert budget.held == 100


async def test_a_charge_larger_than_the_whole_budget_is_refused_at_once() -> None:
    budget = MemoryBudget(100, wait_seconds=30)
    with pytest.raises(Problem):
        await asyncio.wait_for(budget.charge(client(), 101), 5)  # type: ignore[arg-type]


async def test_a_waiter_that_is_cancelled_gives_its_place_to_the_next() -> None:
    budget = MemoryBudget(100, wait_seconds=30)
    holder: Scope = client()
    await budget.charge(holder, 100)  # type: ignore[arg-type]
    big = asyncio.create_task(budget.charge(client(), 90))  # type: ignore[arg-type]
    small_scope: Scope = client()
    small = asyncio.create_task(budget.charge(small_scope, 10))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    big.cancel()
    await asyncio.gather(big, return_exceptions=True)
    give_back(holder)  # type: ignore[arg-type]
    await asyncio.wait_for(small, 5)
    assert budget.held == 10
    assert not budget.waiting


def test_the_request_memory_defaults_to_128mi_or_what_a_smaller_worker_leaves() -> None:
    plan = {"request_memory": None, "max_body_bytes": 316_384, "max_clouds": 100_000, "backpressure": 512, "workers": 1}
    assert plan_request_memory(**plan, worker_memory=None) == DEFAULT_REQUEST_MEMORY
    assert plan_request_memory(**plan, worker_memory=512 * MIB) == DEFAULT_REQUEST_MEMORY
    assert plan_request_memory(**plan, worker_memory=256 * MIB) == 256 * MIB - WORKER_BASELINE
    assert plan_request_memory(**(plan | {"request_memory": 64 * MIB}), worker_memory=512 * MIB) == 64 * MIB


@pytest.mark.parametrize(
    ("request_memory", "worker_memory", "words"),
    [
        (None, 128 * MIB, "is given 128Mi, which leaves 0Mi"),
        (None, WORKER_BASELINE + 2 * MIB, "which leaves 2Mi"),
        (4 * MIB, None, "JOTC_REQUEST_MEMORY (4Mi) cannot hold the small bodies' allowance and one request"),
        (400 * MIB, 512 * MIB, "needs 560Mi"),
    ],
)
def test_settings_a_worker_cannot_hold_stop_start_up_with_one_line(
    request_memory: int | None, worker_memory: int | None, words: str
) -> None:
    with pytest.raises(BudgetError) as refused:
        plan_request_memory(
            request_memory=request_memory,
            max_body_bytes=316_384,
            max_clouds=100_000,
            backpressure=512,
            worker_memory=worker_memory,
            workers=2,
        )
    assert words in str(refused.value)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(
    ("content", "expected"),
    [("536870912\n", 512 * MIB), ("max\n", None), ("9223372036854771712\n", None)],
)
def test_the_containers_memory_limit(tmp_path: Path, content: str, expected: int | None) -> None:
    (tmp_path / "memory.max").write_text(content)
    assert server.memory_limit((tmp_path / "memory.max",)) == expected
    assert server.memory_limit((tmp_path / "absent",)) is None


def test_memory_sizes_are_read_as_kubernetes_writes_them() -> None:
    good = {"DATABASE_URL": "postgresql://u@h/db"}
    for raw, expected in [("128Mi", 128 * MIB), ("1Gi", 1024 * MIB), ("134217728", 128 * MIB), ("200M", 200 * 10**6)]:
        assert load_settings(good | {"JOTC_WORKER_MEMORY": raw}).worker_memory == expected
    for raw in ("lots", "12Q", "-5Mi"):
        with pytest.raises(SettingsError, match="JOTC_WORKER_MEMORY must be a size"):
            load_settings(good | {"JOTC_WORKER_MEMORY": raw})
    assert load_settings(good).request_memory is None
    assert load_settings(good).max_body_bytes == 3 * 100_000 + 16 * 1024
    assert load_settings(good | {"JOTC_MAX_CLOUDS": "1000"}).max_body_bytes == 3 * 1000 + 16 * 1024


async def test_one_client_holds_at_most_its_share_and_waits_for_itself_not_others() -> None:
    budget = MemoryBudget(100, client_share=0.25, wait_seconds=30)
    greedy: Scope = {"client": ("2001:db8::1", 1), "headers": []}
    await budget.charge(greedy, 20)  # type: ignore[arg-type]
    again: Scope = {"client": ("2001:db8::2", 1), "headers": []}  # the same /64: the same client
    second = asyncio.create_task(budget.charge(again, 10))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    assert not second.done(), "past its share: it waits for its own charges"
    assert not budget.waiting, "in a line of its own, where it holds no one else up"
    bystander: Scope = client()
    await asyncio.wait_for(budget.charge(bystander, 70), 5)  # type: ignore[arg-type]
    assert budget.held == 90
    give_back(greedy)  # type: ignore[arg-type]
    await asyncio.wait_for(second, 5)
    assert budget.held == 80
    with pytest.raises(Problem) as refused:  # a read holds no upload slot: it never waits
        await budget.charge({"client": ("2001:db8::3", 1), "headers": []}, 20, wait=False)  # type: ignore[arg-type]
    assert "this client" in refused.value.detail
    alone = MemoryBudget(100, client_share=0.25)
    await alone.charge(client(), 60)  # type: ignore[arg-type]  # one request past the share still fits
    assert alone.held == 60


async def test_a_client_that_waits_too_long_for_its_share_is_refused() -> None:
    budget = MemoryBudget(100, client_share=0.25, wait_seconds=0.01)
    holder: Scope = {"client": ("198.51.100.1", 1), "headers": []}
    await budget.charge(holder, 25)  # type: ignore[arg-type]
    with pytest.raises(Problem) as refused:
        await budget.charge({"client": ("198.51.100.1", 2), "headers": []}, 1)  # type: ignore[arg-type]
    assert (refused.value.status, "this client" in refused.value.detail) == (503, True)
    assert budget.client_lines == {}
    give_back(holder)  # type: ignore[arg-type]
    assert (budget.held, budget.by_client) == (0, {})
