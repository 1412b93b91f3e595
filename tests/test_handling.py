"""Request handling without middleware: every route wrapped, unknown paths answered alike."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from resolver.app import create_app
from resolver.config import Settings
from resolver.http.handling import add_routes, check_all_handled, handled

Client = Callable[..., Any]


async def ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


@pytest.fixture
async def client(settings: Settings, engine: Any, aiohttp_client: Client) -> TestClient:
    return await aiohttp_client(create_app(settings))


def test_a_route_added_without_add_routes_is_refused() -> None:
    app = web.Application()
    add_routes(app, [web.get("/wrapped", ok)])
    check_all_handled(app)
    app.router.add_get("/bare", ok)
    with pytest.raises(RuntimeError, match="GET /bare"):
        check_all_handled(app)


def test_wrapping_twice_is_wrapping_once() -> None:
    once = handled(ok)
    assert handled(once) is once


async def test_unknown_paths_get_json_errors_with_a_request_id(client: TestClient) -> None:
    resp = await client.get("/no/such/path", headers={"X-Request-ID": "lost-1"})
    assert resp.status == 404
    assert resp.headers["X-Request-ID"] == "lost-1"
    assert (await resp.json())["error"] == "not_found"

    # The path exists for GET only: 405 naming the methods that work.
    resp = await client.delete("/healthz")
    assert resp.status == 405
    assert set(resp.headers["Allow"].split(",")) >= {"GET"}
    assert (await resp.json())["error"] == "method_not_allowed"


async def test_unknown_scim_paths_get_scim_errors(client: TestClient) -> None:
    resp = await client.get("/scim/v2/Nope")
    assert resp.status == 404
    body = await resp.json()
    assert body["schemas"] == ["urn:ietf:params:scim:api:messages:2.0:Error"]
    assert body["status"] == "404"


async def test_unknown_jwt_paths_get_plain_text(client: TestClient) -> None:
    resp = await client.get("/jwt/v1/nothing-here")
    assert resp.status == 404
    assert resp.content_type == "text/plain"
