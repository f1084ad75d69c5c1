"""The load test's token as plain logic: which requests count as a simulated user (the right token,
compared in constant time, and a valid name) and which stay counted by their address, and the
setting's own checks. Through HTTP against real Redis: tests/integration/test_loadtest_token.py."""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any

import pytest

from jotc_api import clients
from jotc_api.clients import Clients
from jotc_api.ratelimit import RateLimiter
from jotc_api.settings import RateLimit, Settings, SettingsError, load_settings

TOKEN = "loadtest-token-of-the-swarm-0123456789abcdef"  # pragma: allowlist secret
OTHER_TOKEN = "another-token-of-32-characters-or-more-000"  # pragma: allowlist secret
GOOD = {"DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/jotc"}


def scope(*headers: tuple[str, str], peer: str = "203.0.113.9") -> dict[str, Any]:
    return {"client": (peer, 5555), "headers": [(name.encode(), value.encode("utf-8")) for name, value in headers]}


def swarm(name: str, token: str = TOKEN) -> tuple[tuple[str, str], tuple[str, str]]:
    return ("jotc-loadtest-token", token), ("jotc-loadtest-client", name)


def test_the_right_token_names_the_simulated_client() -> None:
    assert Clients((), TOKEN).of(scope(*swarm("user-1"))) == "loadtest:user-1"
    assert Clients((), TOKEN).of(scope(*swarm("user-2"))) == "loadtest:user-2"


@pytest.mark.parametrize(
    "headers",
    [
        swarm("user-1", TOKEN[:-1]),
        swarm("user-1", TOKEN + "x"),
        swarm("user-1", ""),
        swarm("user-1", OTHER_TOKEN),
        (("jotc-loadtest-client", "user-1"),),
        (("jotc-loadtest-token", TOKEN),),
        swarm(""),
        swarm("a b"),
        swarm("x" * 65),
        swarm("user/1"),
        swarm("ünï"),
    ],
)
def test_anything_else_is_counted_by_its_address(headers: tuple[tuple[str, str], ...]) -> None:
    assert Clients((), TOKEN).of(scope(*headers)) == "203.0.113.9"


def test_behind_a_trusted_proxy_a_forged_token_is_counted_by_the_forwarded_address() -> None:
    behind = Clients([ipaddress.ip_network("10.0.0.0/8")], TOKEN)
    forged = scope(("x-forwarded-for", "198.51.100.4"), *swarm("user-1", OTHER_TOKEN), peer="10.1.2.3")
    assert behind.of(forged) == "198.51.100.4"
    real = scope(("x-forwarded-for", "198.51.100.4"), *swarm("user-1"), peer="10.1.2.3")
    assert behind.of(real) == "loadtest:user-1"


def test_without_a_token_no_request_is_the_load_tests() -> None:
    assert Clients(()).of(scope(*swarm("user-1"))) == "203.0.113.9"
    assert Clients((), "").of(scope(*swarm("user-1"))) == "203.0.113.9"


def test_the_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []

    def compare_digest(given: bytes, expected: bytes) -> bool:
        compared.append((given, expected))
        return given == expected

    monkeypatch.setattr(clients.hmac, "compare_digest", compare_digest)
    assert Clients((), TOKEN).of(scope(*swarm("user-1", OTHER_TOKEN))) == "203.0.113.9"
    assert compared == [(OTHER_TOKEN.encode(), TOKEN.encode())]


def test_the_rate_limiter_counts_simulated_users_apart() -> None:
    limiter = RateLimiter(RateLimit(1, 3600), None, (), loadtest_token=TOKEN)  # type: ignore[arg-type]
    keys = {limiter.clients.of(scope(*swarm(f"user-{index}"))) for index in range(3)}
    assert keys == {"loadtest:user-0", "loadtest:user-1", "loadtest:user-2"}


@pytest.mark.parametrize(
    ("value", "why"),
    [("short-token", "at least 32 characters"), (TOKEN[:20] + " " + TOKEN[20:], "visible ASCII")],
)
def test_a_weak_token_is_refused(value: str, why: str) -> None:
    with pytest.raises(SettingsError, match="JOTC_LOADTEST_TOKEN") as refused:
        load_settings({**GOOD, "JOTC_LOADTEST_TOKEN": value})
    assert why in str(refused.value)


def test_the_admin_token_is_refused_as_the_load_tests() -> None:
    with pytest.raises(SettingsError, match="JOTC_LOADTEST_TOKEN is the admin token"):
        load_settings({**GOOD, "JOTC_LOADTEST_TOKEN": TOKEN, "JOTC_ADMIN_TOKEN": TOKEN})
    both = load_settings({**GOOD, "JOTC_LOADTEST_TOKEN": TOKEN, "JOTC_ADMIN_TOKEN": OTHER_TOKEN})
    assert (both.loadtest_token, both.admin_token) == (TOKEN, OTHER_TOKEN)


def test_names_past_the_bound_are_counted_by_address_until_a_place_falls_idle() -> None:
    now = [1000.0]
    bounded = Clients((), TOKEN, max_simulated=3, clock=lambda: now[0])
    for name in ("user-1", "user-2", "user-3"):
        assert bounded.of(scope(*swarm(name))) == f"loadtest:{name}"
    # Every place taken by a client active just now: a made-up fourth name gains nothing.
    assert bounded.of(scope(*swarm("user-4"), peer="203.0.113.9")) == "203.0.113.9"
    assert bounded.of(scope(*swarm("user-2"))) == "loadtest:user-2"  # the tracked keep theirs
    now[0] += clients.SIMULATED_IDLE_SECONDS  # user-1 and user-3 idle since; user-2 too, but later
    assert bounded.of(scope(*swarm("user-4"))) == "loadtest:user-4"  # user-1's place, the oldest
    assert list(bounded.simulated_seen) == ["loadtest:user-3", "loadtest:user-2", "loadtest:user-4"]


def test_a_flood_of_made_up_names_cannot_fill_the_rate_limiters_table() -> None:
    limiter = RateLimiter(RateLimit(10, 60), None, (), loadtest_token=TOKEN)  # type: ignore[arg-type]
    names = (f"user-{number}" for number in range(clients.MAX_SIMULATED_CLIENTS + 500))
    keys = {limiter.clients.of(scope(*swarm(name))) for name in names}
    assert len(keys) == clients.MAX_SIMULATED_CLIENTS + 1  # the tracked names and the sender's address
    assert "203.0.113.9" in keys


def test_the_settings_description_states_the_bound_clients_py_holds() -> None:
    text = str(next(field for field in dataclasses.fields(Settings) if field.name == "loadtest_token").metadata)
    assert f"{clients.MAX_SIMULATED_CLIENTS:,} simulated clients" in text
    assert f"last {clients.SIMULATED_IDLE_SECONDS:g} s" in text
