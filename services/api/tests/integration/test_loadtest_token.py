"""The load test's token through HTTP, in process against real Redis (JOTC_LOADTEST_TOKEN): each
simulated user the swarm names is one client with the whole budget, as each real user is, while a
forged or absent token gains nothing and everyone else is limited as before. The key logic alone:
tests/unit/test_loadtest_clients.py."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable

from support import fake_client, in_process, mid_window

TOKEN = "loadtest-token-of-the-swarm-0123456789abcdef"  # pragma: allowlist secret
LIMITED = {"JOTC_RATE_LIMIT": "5/hour", "JOTC_TRUSTED_PROXIES": "127.0.0.1"}
BODY = {"clouds": [0, 0, 1, 0]}


def swarm_user() -> str:
    """A simulated user's name no other test (or run) uses: its budget in Redis is its own."""
    return f"user-{uuid.uuid4().hex[:16]}"


def statuses(post: Callable[[], int], times: int = 7) -> Counter[int]:
    return Counter(post() for _ in range(times))


def test_each_simulated_user_has_a_clients_budget(database_url: str) -> None:
    limited_app = in_process(database_url, peer="127.0.0.1", clock=mid_window(), JOTC_LOADTEST_TOKEN=TOKEN, **LIMITED)
    address = fake_client()  # every simulated user below comes through one worker's address
    with limited_app as http:

        def as_user(name: str) -> Callable[[], int]:
            headers = {"x-forwarded-for": address, "jotc-loadtest-token": TOKEN, "jotc-loadtest-client": name}
            return lambda: http.post("/jumps", json=BODY, headers=headers).status_code

        first, second = swarm_user(), swarm_user()
        # The limit applies to each simulated user, as it would to a real client ...
        assert statuses(as_user(first)) == {201: 5, 429: 2}
        assert statuses(as_user(second)) == {201: 5, 429: 2}
        # ... and the swarm's requests did not spend the budget of the address they came from.
        plain = {"x-forwarded-for": address}
        assert statuses(lambda: http.post("/jumps", json=BODY, headers=plain).status_code) == {201: 5, 429: 2}


def test_a_forged_token_gains_nothing(database_url: str) -> None:
    limited_app = in_process(database_url, peer="127.0.0.1", clock=mid_window(), JOTC_LOADTEST_TOKEN=TOKEN, **LIMITED)
    address = fake_client()
    with limited_app as http:

        def forged(token: str) -> int:
            headers = {"x-forwarded-for": address, "jotc-loadtest-token": token, "jotc-loadtest-client": swarm_user()}
            return http.post("/jumps", json=BODY, headers=headers).status_code

        # A new simulated user every request, under tokens that are not the swarm's: the address
        # they come from pays for all of them.
        guesses = [TOKEN[:-1] + "0", TOKEN.upper(), TOKEN + "x", TOKEN[:32], "", TOKEN[1:]]
        assert Counter(forged(guesses[index % len(guesses)]) for index in range(7)) == {201: 5, 429: 2}
        # The right token without a valid name is counted by the address too, already spent.
        for name in ("", "spaces in it", "x" * 65, "user/1"):
            headers = {"x-forwarded-for": address, "jotc-loadtest-token": TOKEN, "jotc-loadtest-client": name}
            assert http.post("/jumps", json=BODY, headers=headers).status_code == 429, repr(name)


def test_without_a_token_configured_the_headers_are_ignored(database_url: str) -> None:
    unconfigured = in_process(database_url, peer="127.0.0.1", clock=mid_window(), **LIMITED)
    address = fake_client()
    with unconfigured as http:

        def with_headers() -> int:
            headers = {"x-forwarded-for": address, "jotc-loadtest-token": TOKEN, "jotc-loadtest-client": swarm_user()}
            return http.post("/jumps", json=BODY, headers=headers).status_code

        assert statuses(with_headers) == {201: 5, 429: 2}


def test_everyone_else_is_limited_while_the_swarm_runs(database_url: str) -> None:
    limited_app = in_process(database_url, peer="127.0.0.1", clock=mid_window(), JOTC_LOADTEST_TOKEN=TOKEN, **LIMITED)
    with limited_app as http:
        swarm = {"x-forwarded-for": fake_client(), "jotc-loadtest-token": TOKEN, "jotc-loadtest-client": swarm_user()}
        client = {"x-forwarded-for": fake_client()}
        outcomes: dict[str, Counter[int]] = {"swarm": Counter(), "client": Counter()}
        for _ in range(7):  # interleaved, as they arrive in production
            outcomes["swarm"][http.post("/jumps", json=BODY, headers=swarm).status_code] += 1
            outcomes["client"][http.post("/jumps", json=BODY, headers=client).status_code] += 1
        assert outcomes == {"swarm": {201: 5, 429: 2}, "client": {201: 5, 429: 2}}
