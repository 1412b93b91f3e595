"""A small client for the admin and SCIM APIs, and probes of what the database holds.

The roles and bindings tests drive the service the way an operator and an IdP do (HTTP
only) and then look at what nats-server would see: the served account JWT and the outbox.
"""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from resolver.db.models import Account, AuditEntry, Binding, PushOutbox, Revocation, Role
from resolver.natsjwt import decode
from tests.accounts.conftest import bearer

Sessions = async_sessionmaker[AsyncSession]
USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"


class Api:
    """Calls with a token by scope name (``admin``, ``admin:read``, ``scim``, or None)."""

    def __init__(self, http: TestClient, tokens: dict[str, str]) -> None:
        self.client = http
        self.tokens = tokens

    async def call(
        self, method: str, path: str, body: Any = None, *, token: str | None = "admin"
    ) -> tuple[int, Any]:
        headers = bearer(self.tokens[token]) if token is not None else {}
        if path.startswith("/scim/"):
            headers["Content-Type"] = "application/scim+json"
        resp = await self.client.request(method, path, json=body, headers=headers)
        text = await resp.text()
        return resp.status, (await resp.json(content_type=None)) if text else None

    async def ok(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        status, data = await self.call(method, path, body, **kw)
        assert 200 <= status < 300, (method, path, status, data)
        return data

    async def user(self, name: str) -> str:
        body = {"schemas": [USER], "userName": name, "active": True}
        return (await self.ok("POST", "/scim/v2/Users", body, token="scim"))["id"]

    async def group(self, name: str, members: list[str]) -> str:
        body = {"schemas": [GROUP], "displayName": name, "members": [{"value": m} for m in members]}
        return (await self.ok("POST", "/scim/v2/Groups", body, token="scim"))["id"]

    async def creds(self, user: str, account: str) -> dict[str, Any]:
        """Person credentials (the service makes the key): what a user connects with."""
        return await self.ok(
            "POST", f"/admin/v1/users/{user}/credentials", {"account": account, "ttl": "10m"}
        )

    async def served(self, account_key: str) -> dict[str, Any]:
        """The account JWT's claims as nats-server would fetch them."""
        resp = await self.client.get(f"/jwt/v1/accounts/{account_key}")
        assert resp.status == 200, await resp.text()
        return decode(await resp.text(), expected_type="account").claims


async def count(sessions: Sessions, model: Any, *where: Any) -> int:
    async with sessions() as session:
        query = select(func.count()).select_from(model)
        if where:
            query = query.where(*where)
        return int(await session.scalar(query) or 0)


async def state(sessions: Sessions) -> dict[str, Any]:
    """Everything a refused request must leave exactly as it was."""
    async with sessions() as session:
        return {
            "roles": dict((await session.execute(select(Role.name, Role.spec))).all()),
            "bindings": (
                await session.execute(
                    select(Binding.id, Binding.role_id, Binding.ends_at).order_by(Binding.id)
                )
            ).all(),
            "accounts": (
                await session.execute(
                    select(Account.name, Account.jti, Account.spec, Account.deleted_at).order_by(
                        Account.id
                    )
                )
            ).all(),
            "outbox": await session.scalar(select(func.count()).select_from(PushOutbox)),
            "audit": await session.scalar(select(func.count()).select_from(AuditEntry)),
            "revocations": await session.scalar(select(func.count()).select_from(Revocation)),
        }


def scoped_keys(claims: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The account JWT's ``user_scope`` signing keys by public key."""
    return {
        key["key"]: key
        for key in claims["nats"].get("signing_keys", [])
        if isinstance(key, dict) and key.get("kind") == "user_scope"
    }
