"""Per-token rate limits: 429 with Retry-After past a token's burst, other tokens untouched."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp.test_utils import TestClient

from resolver.app import create_app
from resolver.appkeys import TOKEN_BUCKETS
from resolver.auth.ratelimit import TokenBuckets, retry_after_seconds
from resolver.config import Settings
from tests.accounts.conftest import bearer


def test_a_bucket_allows_its_burst_then_refills_at_its_rate() -> None:
    now = [100.0]
    buckets = TokenBuckets(rate=2, burst=3, clock=lambda: now[0])
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == 0.5  # one token comes back every half second
    assert buckets.take("b") == 0.0  # each key has its own bucket
    now[0] += 0.5
    assert buckets.take("a") == 0.0
    assert buckets.take("a") > 0
    now[0] += 60  # idle for long: back to the burst, not more
    assert [buckets.take("a") for _ in range(4)].count(0.0) == 3
    assert TokenBuckets(rate=0, burst=1).take("a") == 0.0  # 0: no limit
    assert retry_after_seconds(0.01) == 1 and retry_after_seconds(1.2) == 2


async def test_a_token_past_its_burst_gets_429_with_retry_after(
    settings: Settings,
    operator: Any,
    tokens: dict[str, str],
    aiohttp_client: Callable[..., Any],
) -> None:
    app = create_app(settings, overrides={TOKEN_BUCKETS: TokenBuckets(rate=1, burst=2)})
    client: TestClient = await aiohttp_client(app)
    reader = bearer(tokens["admin:read"])
    for _ in range(2):
        assert (await client.get("/admin/v1/accounts", headers=reader)).status == 200
    limited = await client.get("/admin/v1/accounts", headers=reader)
    assert limited.status == 429
    assert limited.headers["Retry-After"] == "1"
    body = await limited.json()
    assert body["error"] == "rate_limited" and "t-admin-read" in body["message"]
    assert tokens["admin:read"] not in await limited.text()
    # Another token has its own bucket; a request without a valid token takes no turn.
    assert (await client.get("/admin/v1/accounts", headers=bearer(tokens["admin"]))).status == 200
    assert (await client.get("/admin/v1/accounts", headers=bearer("nir_nope"))).status == 401
    # SCIM answers in its own error format.
    scim = await client.get("/scim/v2/Users", headers=bearer(tokens["scim"]))
    assert scim.status == 200
    await client.get("/scim/v2/Users", headers=bearer(tokens["scim"]))
    scim = await client.get("/scim/v2/Users", headers=bearer(tokens["scim"]))
    assert scim.status == 429 and scim.headers["Retry-After"] == "1"
    scim_body = await scim.json()
    assert scim_body["status"] == "429"
    assert "urn:ietf:params:scim:api:messages:2.0:Error" in scim_body["schemas"]
    await asyncio.sleep(1.05)
    assert (await client.get("/admin/v1/accounts", headers=reader)).status == 200


async def test_the_default_limit_comes_from_the_settings(client: TestClient) -> None:
    buckets = client.app[TOKEN_BUCKETS]
    assert (buckets.rate, buckets.burst) == (500, 1000)
