"""A 503 caused by PostgreSQL tells the client which dependency failed, never where it runs: the
driver's words (`connection to server at "10.0.0.5", port 5432 failed`) stay in the server's log.
The real server reaches PostgreSQL through a proxy that the test cuts."""

from __future__ import annotations

from pathlib import Path

import httpx
from support import AUTH, proxied, start_api


def test_database_503_details_name_postgresql_never_its_address(database_url: str, tmp_root: Path) -> None:
    with proxied(database_url) as (proxy, through_proxy):
        server = start_api(through_proxy, tmp_root, JOTC_WORKERS="1")
        try:
            with httpx.Client(base_url=server.base_url, timeout=30) as http:
                recorded = http.post("/jumps", json={"clouds": [0, 0, 1, 0], "user": "outage-details"})
                assert recorded.status_code == 201, recorded.text
                proxy.cut()
                # Several writes: the first may fail on the connection the cut reset, the next ones
                # connect afresh and are refused, which psycopg reports with the address.
                answers = [http.post("/jumps", json={"clouds": [0, 0], "user": "outage-details"}) for _ in range(3)]
                answers += [
                    http.post("/jotc", json={"clouds": [0, 0]}),
                    http.get(recorded.headers["location"]),
                    http.get("/admin/stats", headers=AUTH),
                    http.get("/admin/requests", headers=AUTH),
                ]
            log = server.log()
        finally:
            server.stop()
    address = ("127.0.0.1", str(proxy.port))
    said = [(f"{a.request.method} {a.request.url.path}", a.status_code, a.json()["detail"]) for a in answers]
    assert [status for _, status, _ in said] == [503] * len(said), said
    assert not [(where, detail) for where, _, detail in said if any(part in detail for part in address)], (
        f"the address is told: {said}"
    )
    assert all("PostgreSQL" in detail for _, _, detail in said), f"the role is not named: {said}"
    assert f"port {proxy.port}" in log, "the driver's words, address included, are kept in the log"
