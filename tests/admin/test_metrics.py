"""``GET /metrics``: who may read it, and that what happens shows in it.

The counters live in the process's registry, shared by every app a test run makes, so each
test reads a value before and after what it does and checks the difference.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from resolver.jobs.scheduler import JobSpec, _logged
from resolver.natsjwt import new_keypair
from tests.accounts.conftest import bearer
from tests.admin.api import Api


async def scrape(client: TestClient, tokens: dict[str, str]) -> str:
    resp = await client.get("/metrics", headers=bearer(tokens["admin:read"]))
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/plain; version=")
    return await resp.text()


def value(text: str, name: str, **labels: str) -> float:
    """The sample ``name{labels}`` in the exposition ``text`` (0 when absent)."""
    for line in text.splitlines():
        match = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if match is None or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        if found == labels:
            return float(match.group(3))
    return 0.0


async def test_metrics_need_a_read_token(client: TestClient, tokens: dict[str, str]) -> None:
    assert (await client.get("/metrics")).status == 401
    assert (await client.get("/metrics", headers=bearer(tokens["scim"]))).status == 403
    for scope in ("admin", "admin:read"):
        assert (await client.get("/metrics", headers=bearer(tokens[scope]))).status == 200


async def test_http_requests_by_route_template_and_status(
    client: TestClient, tokens: dict[str, str]
) -> None:
    name = "nir_http_request_duration_seconds_count"
    before = await scrape(client, tokens)
    for _ in range(3):
        assert (await client.get("/healthz")).status == 200
    key, _seed = new_keypair("account")
    assert (await client.get(f"/jwt/v1/accounts/{key}")).status == 404
    after = await scrape(client, tokens)
    healthz = {"method": "GET", "route": "/healthz", "status": "200"}
    assert value(after, name, **healthz) - value(before, name, **healthz) == 3
    # The route's template, not the path: one series whatever the account asked for.
    jwt = {"method": "GET", "route": "/jwt/v1/accounts/{key}", "status": "404"}
    assert value(after, name, **jwt) - value(before, name, **jwt) == 1
    assert key not in after
    bucket = "nir_http_request_duration_seconds_bucket"
    assert value(after, bucket, **healthz, le="+Inf") == value(after, name, **healthz)


async def test_scim_operations_by_resource_operation_and_status(
    client: TestClient, tokens: dict[str, str]
) -> None:
    api = Api(client, tokens)
    name = "nir_scim_operations_total"
    before = await scrape(client, tokens)
    user = await api.user("metrics-alice")
    status, _ = await api.call("POST", "/scim/v2/Users", {"userName": 5}, token="scim")
    assert status == 400
    await api.ok("DELETE", f"/scim/v2/Users/{user}", token="scim")
    after = await scrape(client, tokens)

    def delta(**labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta(resource="User", operation="create", status="201") == 1
    assert delta(resource="User", operation="create", status="400") == 1
    assert delta(resource="User", operation="delete", status="204") == 1


async def test_outbox_and_the_largest_account_jwts_are_read_at_the_scrape(
    client: TestClient, tokens: dict[str, str]
) -> None:
    api = Api(client, tokens)
    account = await api.ok("POST", "/admin/v1/accounts", {"name": "METRICS"})
    text = await scrape(client, tokens)
    # No nats-server here: the new account's JWT waits in the outbox.
    assert value(text, "nir_push_outbox_pending") >= 1
    assert value(text, "nir_push_outbox_oldest_pending_seconds") >= 0
    served = await client.get(f"/jwt/v1/accounts/{account['public_key']}")
    size = len(await served.text())
    assert value(text, "nir_account_jwt_bytes", account="METRICS") == size
    assert value(text, "nir_account_revocations", account="METRICS") == 0
    for _ in range(2):
        user_key, _seed = new_keypair("user")
        await api.ok("POST", "/admin/v1/accounts/METRICS/revocations", {"user_key": user_key})
    text = await scrape(client, tokens)
    assert value(text, "nir_account_revocations", account="METRICS") == 2
    assert value(text, "nir_account_jwt_bytes", account="METRICS") > size


async def test_job_runs_and_their_last_result(client: TestClient, tokens: dict[str, str]) -> None:
    calls: list[str] = []

    async def works(_app: web.Application) -> None:
        calls.append("works")

    async def fails(_app: web.Application) -> Any:
        calls.append("fails")
        raise RuntimeError("broken on purpose")

    app = web.Application()
    before = await scrape(client, tokens)
    for func, name in ((works, "metrics-works"), (fails, "metrics-fails")):
        await _logged(JobSpec(name, func, 60, 60), app, set())()
    after = await scrape(client, tokens)
    assert calls == ["works", "fails"]
    runs = "nir_job_runs_total"
    assert (
        value(after, runs, job="metrics-works", result="ok")
        - value(before, runs, job="metrics-works", result="ok")
        == 1
    )
    assert (
        value(after, runs, job="metrics-fails", result="failed")
        - value(before, runs, job="metrics-fails", result="failed")
        == 1
    )
    assert value(after, "nir_job_last_run_ok", job="metrics-works") == 1
    assert value(after, "nir_job_last_run_ok", job="metrics-fails") == 0
    assert value(after, "nir_job_last_run_timestamp_seconds", job="metrics-fails") > 0
