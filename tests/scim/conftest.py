"""A real app on a migrated database (SQLite and PostgreSQL) and a small SCIM client."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from resolver.app import create_app
from resolver.auth.tokens import create_token
from resolver.config import Settings
from resolver.db.engine import create_sessionmaker
from resolver.db.models import AuditEntry
from resolver.http.auth import authenticate
from resolver.http.handling import add_routes

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
SEARCH = "urn:ietf:params:scim:api:messages:2.0:SearchRequest"
ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"

Client = Callable[..., Any]


def patch(*operations: dict[str, Any]) -> dict[str, Any]:
    return {"schemas": [PATCH_OP], "Operations": list(operations)}


@dataclass
class Reply:
    status: int
    body: Any
    headers: Any

    @property
    def scim_type(self) -> str | None:
        return self.body.get("scimType") if isinstance(self.body, dict) else None


@dataclass
class Scim:
    """Calls /scim/v2 with a bearer token, as an IdP does."""

    http: TestClient
    token: str
    engine: AsyncEngine
    admin_token: str = ""
    tokens: dict[str, str] = field(default_factory=dict)

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
        token: str | None = None,
    ) -> Reply:
        sent = {"Authorization": f"Bearer {token or self.token}"}
        if body is not None or raw is not None:
            sent["Content-Type"] = "application/scim+json"
        sent.update(headers or {})
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        resp = await self.http.request(method, "/scim/v2" + path, data=data, headers=sent)
        text = await resp.text()
        parsed = json.loads(text) if text else None
        if resp.status >= 400:
            assert resp.content_type == "application/scim+json", (resp.status, text)
            assert parsed["schemas"] == [ERROR] and parsed["status"] == str(resp.status)
        return Reply(resp.status, parsed, resp.headers)

    async def get(self, path: str, **kw: Any) -> Reply:
        return await self.call("GET", path, **kw)

    async def post(self, path: str, body: Any, **kw: Any) -> Reply:
        return await self.call("POST", path, body, **kw)

    async def put(self, path: str, body: Any, **kw: Any) -> Reply:
        return await self.call("PUT", path, body, **kw)

    async def patch(self, path: str, body: Any, **kw: Any) -> Reply:
        return await self.call("PATCH", path, body, **kw)

    async def delete(self, path: str, **kw: Any) -> Reply:
        return await self.call("DELETE", path, **kw)

    async def user(self, user_name: str, **attrs: Any) -> dict[str, Any]:
        reply = await self.post("/Users", {"schemas": [USER], "userName": user_name, **attrs})
        assert reply.status == 201, reply.body
        return reply.body

    async def group(self, name: str, members: list[str] = (), **attrs: Any) -> dict[str, Any]:  # type: ignore[assignment]
        body = {"schemas": [GROUP], "displayName": name, **attrs}
        if members:
            body["members"] = [{"value": m} for m in members]
        reply = await self.post("/Groups", body)
        assert reply.status == 201, reply.body
        return reply.body

    async def member_ids(self, group_id: str) -> list[str]:
        reply = await self.get(f"/Groups/{group_id}")
        assert reply.status == 200, reply.body
        return sorted(m["value"] for m in reply.body.get("members", []))

    async def audit(self, action: str | None = None) -> list[AuditEntry]:
        async with create_sessionmaker(self.engine)() as session:
            query = select(AuditEntry).order_by(AuditEntry.id)
            if action is not None:
                query = query.where(AuditEntry.action == action)
            return list(await session.scalars(query))


async def _make_tokens(engine: AsyncEngine) -> dict[str, str]:
    async with create_sessionmaker(engine)() as session, session.begin():
        return {
            "scim": await create_token(session, "okta-scim", ["scim"]),
            "admin": await create_token(session, "ops-admin", ["admin"]),
        }


def build_app(settings: Settings) -> web.Application:
    app = create_app(settings)

    async def admin_probe(request: web.Request) -> web.Response:
        await authenticate(request, "admin")
        return web.json_response({"ok": True})

    # A stand-in admin route: the auth helper every /admin/ route uses.
    add_routes(app, [web.get("/admin/_probe", admin_probe)])
    return app


@pytest.fixture
async def scim(settings: Settings, engine: AsyncEngine, aiohttp_client: Client) -> Scim:
    tokens = await _make_tokens(engine)
    http = await aiohttp_client(build_app(settings))
    return Scim(http, tokens["scim"], engine, tokens["admin"], tokens)
