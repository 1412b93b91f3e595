"""Roles, bindings, person credentials, account changes and explain, through the admin API."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from resolver.accounts.service import get_account
from resolver.config import Settings
from resolver.db.models import IssuedUserKey, PushOutbox, Revocation
from resolver.natsjwt import decode, new_keypair
from resolver.policy.user_creds import issue_person_creds
from resolver.sealing import Sealer
from tests.accounts.conftest import (  # noqa: F401  (fixtures)
    ADMIN,
    bearer,
    client,
    operator,
    sealer,
    sessions,
    tokens,
)

Sessions = async_sessionmaker[AsyncSession]
USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
WRITER = {
    "name": "writer",
    "publish": {"allow": ["orders.>"], "deny": ["orders.admin.>"]},
    "subscribe": ["orders.>"],
    "max_ttl": "2h",
}


class Api:
    def __init__(self, http: TestClient, bearers: dict[str, str]) -> None:
        self.client = http
        self.tokens = bearers

    async def call(
        self, method: str, path: str, body: Any = None, *, token: str = "admin"
    ) -> tuple[int, Any]:
        headers = bearer(self.tokens[token])
        if path.startswith("/scim/"):
            headers["Content-Type"] = "application/scim+json"
        resp = await self.client.request(method, path, json=body, headers=headers)
        text = await resp.text()
        return resp.status, (await resp.json(content_type=None)) if text else None

    async def ok(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        status, data = await self.call(method, path, body, **kw)
        assert 200 <= status < 300, (method, path, status, data)
        return data

    async def user(self, name: str, active: bool = True) -> str:
        body = {"schemas": [USER], "userName": name, "active": active}
        return (await self.ok("POST", "/scim/v2/Users", body, token="scim"))["id"]

    async def group(self, name: str, members: list[str]) -> str:
        body = {"schemas": [GROUP], "displayName": name, "members": [{"value": m} for m in members]}
        return (await self.ok("POST", "/scim/v2/Groups", body, token="scim"))["id"]

    async def remove_members(self, group_id: str, members: list[str]) -> None:
        op = {"op": "remove", "path": "members", "value": [{"value": m} for m in members]}
        body = {"schemas": [PATCH_OP], "Operations": [op]}
        await self.ok("PATCH", f"/scim/v2/Groups/{group_id}", body, token="scim")


@pytest.fixture
def api(client: TestClient, tokens: dict[str, str]) -> Api:
    return Api(client, tokens)


async def account_claims(sessions: Sessions, name: str) -> dict[str, Any]:
    async with sessions() as session:
        account = await get_account(session, name)
        return decode(account.jwt or "", expected_type="account").claims


async def outbox_count(sessions: Sessions, account_key: str) -> int:
    async with sessions() as session:
        return int(
            await session.scalar(select(func.count()).where(PushOutbox.account_key == account_key))
            or 0
        )


async def test_roles_crud_and_refusals(api: Api, sessions: Sessions) -> None:
    created = await api.ok("POST", "/admin/v1/roles", WRITER)
    assert created["name"] == "writer" and created["spec"]["publish"]["deny"] == ["orders.admin.>"]
    assert (await api.call("POST", "/admin/v1/roles", WRITER))[0] == 409
    status, body = await api.call(
        "POST", "/admin/v1/roles", {"name": "bad", "publish": ["orders..x"]}
    )
    assert status == 400 and "orders..x" in body["message"]
    status, body = await api.call("POST", "/admin/v1/roles", {"name": "x", "colour": "red"})
    assert status == 400 and "colour" in body["message"]
    assert (await api.call("POST", "/admin/v1/roles", WRITER, token="admin:read"))[0] == 403
    assert (await api.call("GET", "/admin/v1/roles/nope", token="admin:read"))[0] == 404
    listed = await api.ok("GET", "/admin/v1/roles", token="admin:read")
    assert [r["name"] for r in listed["roles"]] == ["writer"]

    await api.ok("POST", "/admin/v1/accounts", {"name": "orders"})
    binding = await api.ok(
        "POST", "/admin/v1/bindings", {"account": "orders", "role": "writer", "group": "eng"}
    )
    status, body = await api.call("DELETE", "/admin/v1/roles/writer")
    assert status == 409 and str(binding["id"]) in body["message"]
    await api.ok("DELETE", f"/admin/v1/bindings/{binding['id']}")
    await api.ok("DELETE", "/admin/v1/roles/writer")
    assert (await api.call("GET", "/admin/v1/roles/writer", token="admin:read"))[0] == 404


async def test_bindings_crud_and_refusals(api: Api) -> None:
    await api.ok("POST", "/admin/v1/accounts", {"name": "orders"})
    await api.ok("POST", "/admin/v1/roles", WRITER)
    eng = await api.group("eng", [])
    by_id = await api.ok(
        "POST", "/admin/v1/bindings", {"account": "orders", "role": "writer", "group_id": eng}
    )
    assert by_id["group"] == "eng" and by_id["group_id"] == eng
    refusals = [
        ({"account": "orders", "role": "writer", "group_id": eng}, 409, "already"),
        ({"account": "orders", "role": "writer", "group_id": "no-such-group"}, 404, "group"),
        ({"account": "nope", "role": "writer", "group": "g"}, 404, "nope"),
        ({"account": "orders", "role": "nope", "group": "g"}, 404, "nope"),
        ({"account": "orders", "role": "writer"}, 400, "exactly one"),
        ({"account": "orders", "role": "writer", "group": "g", "group_id": eng}, 400, "exactly"),
        (
            {"account": "orders", "role": "writer", "group": "g", "ends_at": "2001-01-01T00:00Z"},
            400,
            "future",
        ),
        ({"account": "orders", "role": "writer", "group": "g", "ends_at": "soon"}, 400, "ISO"),
    ]
    for body, status, words in refusals:
        got, answer = await api.call("POST", "/admin/v1/bindings", body)
        assert got == status and words in answer["message"], (body, got, answer)
    timed = await api.ok(
        "POST",
        "/admin/v1/bindings",
        {
            "account": "orders",
            "role": "writer",
            "claim": {"name": "roles", "value": "ci"},
            "ends_at": "2099-01-01T00:00:00Z",
        },
    )
    assert timed["claim"] == {"name": "roles", "value": "ci"} and timed["ends_at"].startswith(
        "2099-01-01"
    )
    moved = await api.ok(
        "PATCH", f"/admin/v1/bindings/{timed['id']}", {"ends_at": "2098-06-01T00:00:00Z"}
    )
    assert moved["ends_at"].startswith("2098-06-01")
    listed = await api.ok("GET", "/admin/v1/bindings?account=orders", token="admin:read")
    assert [b["id"] for b in listed["bindings"]] == [by_id["id"], timed["id"]]
    assert (await api.call("GET", "/admin/v1/bindings/abc", token="admin:read"))[0] == 400
    await api.ok("DELETE", f"/admin/v1/bindings/{timed['id']}")
    assert (await api.call("GET", f"/admin/v1/bindings/{timed['id']}", token="admin:read"))[
        0
    ] == 404


async def test_person_credentials(api: Api, sessions: Sessions) -> None:
    await api.ok("POST", "/admin/v1/accounts", {"name": "orders"})
    await api.ok("POST", "/admin/v1/roles", WRITER)
    alice = await api.user("alice")
    await api.user("carol")  # in no group
    await api.user("dave", active=False)
    dave_id = (await api.ok("GET", '/scim/v2/Users?filter=userName eq "dave"', token="scim"))[
        "Resources"
    ][0]["id"]
    await api.group("eng", [alice, dave_id])
    await api.ok(
        "POST", "/admin/v1/bindings", {"account": "orders", "role": "writer", "group": "eng"}
    )
    path = "/admin/v1/users/{}/credentials"
    status, body = await api.call("POST", path.format("carol"), {"account": "orders"})
    assert status == 409 and "no binding" in body["message"]
    status, body = await api.call("POST", path.format("dave"), {"account": "orders"})
    assert status == 409 and "inactive" in body["message"]
    assert (await api.call("POST", path.format("nobody"), {"account": "orders"}))[0] == 404
    status, body = await api.call("POST", path.format("alice"), {"account": "orders", "ttl": 5})
    assert status == 400 and "at least" in body["message"]
    assert (
        await api.call("POST", path.format("alice"), {"account": "orders"}, token="admin:read")
    )[0] == 403

    resp = await api.client.post(
        path.format("ALICE"),
        json={"account": "orders", "ttl": "1d"},
        headers=bearer(api.tokens["admin"]),
    )
    assert resp.status == 201 and resp.headers["Cache-Control"] == "no-store"
    issued = await resp.json()
    assert "SEED" in issued["creds"] and issued["roles"] == ["writer"]
    user = decode(issued["jwt"], expected_type="user")
    assert user.claims["name"] == "alice"
    assert user.claims["nats"]["issuer_account"] == issued["account"]
    assert "group:eng" in user.claims["nats"]["tags"]
    # 1d asked, the role allows 2h: the role wins.
    assert user.exp - user.iat == 7200
    scoped = next(
        k
        for k in (await account_claims(sessions, "orders"))["nats"]["signing_keys"]
        if isinstance(k, dict) and k["key"] == issued["signing_key"]
    )
    assert scoped["kind"] == "user_scope" and scoped["role"] == "writer"
    assert scoped["template"]["pub"]["allow"] == ["orders.>"]

    own_key = new_keypair("user")[0]
    mine = await api.ok("POST", path.format(alice), {"account": "orders", "public_key": own_key})
    assert "creds" not in mine and mine["user_key"] == own_key
    assert mine["signing_key"] == issued["signing_key"] and mine["new_signing_key"] is False
    async with sessions() as session:
        keys = set(await session.scalars(select(IssuedUserKey.public_key)))
    assert {issued["user_key"], own_key} <= keys

    # A key once revoked is never signed again (its JWT would be born revoked).
    await api.ok("POST", "/admin/v1/accounts/orders/revocations", {"user_key": own_key})
    status, body = await api.call(
        "POST", path.format(alice), {"account": "orders", "public_key": own_key}
    )
    assert status == 409 and "revoked" in body["message"]


async def test_a_500_member_removal_re_signs_the_account_once(
    api: Api,
    sessions: Sessions,
    sealer: Sealer,
    settings: Settings,
) -> None:
    account = await api.ok("POST", "/admin/v1/accounts", {"name": "orders"})
    await api.ok("POST", "/admin/v1/roles", WRITER)
    members = [await api.user(f"u{i:03d}") for i in range(500)]
    group = await api.group("eng", members)
    await api.ok(
        "POST", "/admin/v1/bindings", {"account": "orders", "role": "writer", "group": "eng"}
    )
    async with sessions() as session, session.begin():
        orders = await get_account(session, "orders")
        keys = [
            (
                await issue_person_creds(
                    session, sealer, settings, orders, m, ttl_seconds=3600, actor=ADMIN
                )
            ).issued.public_key
            for m in members
        ]
    before = await outbox_count(sessions, account["public_key"])
    await api.remove_members(group, members[:499])  # one stays
    assert await outbox_count(sessions, account["public_key"]) == before + 1
    revoked = (await account_claims(sessions, "orders"))["nats"]["revocations"]
    assert set(keys[:499]) <= set(revoked) and keys[499] not in revoked


async def test_losing_a_role_but_not_the_account_revokes_the_wider_key(
    api: Api,
    sessions: Sessions,
) -> None:
    await api.ok("POST", "/admin/v1/accounts", {"name": "orders"})
    await api.ok("POST", "/admin/v1/roles", WRITER)
    await api.ok("POST", "/admin/v1/roles", {"name": "reader", "subscribe": ["orders.>"]})
    alice = await api.user("alice")
    readers = await api.group("readers", [alice])
    writers = await api.group("writers", [alice])
    for group, role in (("readers", "reader"), ("writers", "writer")):
        await api.ok(
            "POST", "/admin/v1/bindings", {"account": "orders", "role": role, "group": group}
        )
    both = await api.ok("POST", "/admin/v1/users/alice/credentials", {"account": "orders"})
    assert both["roles"] == ["reader", "writer"]

    await api.remove_members(readers, [alice])  # still a writer: {reader, writer} ⊄ {writer}
    revoked = (await account_claims(sessions, "orders"))["nats"].get("revocations", {})
    assert both["user_key"] in revoked
    narrow = await api.ok("POST", "/admin/v1/users/alice/credentials", {"account": "orders"})
    assert narrow["roles"] == ["writer"] and narrow["signing_key"] != both["signing_key"]

    jti = (await account_claims(sessions, "orders"))["jti"]
    await api.ok(  # gaining a group revokes nothing and does not re-sign
        "PATCH",
        f"/scim/v2/Groups/{readers}",
        {
            "schemas": [PATCH_OP],
            "Operations": [{"op": "add", "path": "members", "value": [{"value": alice}]}],
        },
        token="scim",
    )
    assert (await account_claims(sessions, "orders"))["jti"] == jti
    async with sessions() as session:
        assert (
            await session.scalar(
                select(Revocation).where(Revocation.public_key == narrow["user_key"])
            )
            is None
        )
    assert writers


async def test_account_update_and_delete(api: Api, sessions: Sessions) -> None:
    created = await api.ok("POST", "/admin/v1/accounts", {"name": "orders"})
    key = created["public_key"]
    changed = await api.ok(
        "PATCH", "/admin/v1/accounts/orders", {"spec": {"limits": {"conn": 10}, "tags": ["a:b"]}}
    )
    assert changed["resigned"] is True
    claims = await account_claims(sessions, "orders")
    assert claims["nats"]["limits"]["conn"] == 10 and claims["nats"]["tags"] == ["a:b"]
    again = await api.ok(
        "PATCH", "/admin/v1/accounts/orders", {"spec": {"limits": {"conn": 10}, "tags": ["a:b"]}}
    )
    assert again["resigned"] is False
    shown = await api.ok("GET", "/admin/v1/accounts/orders", token="admin:read")
    assert shown["size"]["revocations"] == 0 and shown["size"]["budget_bytes"] == 819200
    assert 0 < shown["size"]["jwt_bytes"] < 2000
    dropped = await api.ok("PATCH", "/admin/v1/accounts/orders", {"spec": {"tags": None}})
    assert "tags" not in dropped["spec"]
    status, _ = await api.call("PATCH", "/admin/v1/accounts/orders", {"spec": {"limits": 5}})
    assert status == 400
    assert (await api.call("PATCH", "/admin/v1/accounts/orders", {"spec": {}}, token="admin:read"))[
        0
    ] == 403

    system = next(
        a
        for a in (await api.ok("GET", "/admin/v1/accounts", token="admin:read"))["accounts"]
        if a["is_system"]
    )
    assert (await api.call("DELETE", f"/admin/v1/accounts/{system['public_key']}"))[0] == 409

    await api.ok("DELETE", "/admin/v1/accounts/orders")
    assert (await api.client.get(f"/jwt/v1/accounts/{key}")).status == 404
    assert (await api.call("GET", "/admin/v1/accounts/orders", token="admin:read"))[0] == 404
    async with sessions() as session:
        last = await session.scalar(
            select(PushOutbox).where(PushOutbox.account_key == key).order_by(PushOutbox.id.desc())
        )
    # Go leaves zero limits out, and a missing limit is zero to nats-server.
    limits = decode(last.jwt, expected_type="account").claims["nats"]["limits"]
    assert limits.get("conn", 0) == 0 and limits.get("leaf", 0) == 0
    # The name is free again.
    reborn = await api.ok("POST", "/admin/v1/accounts", {"name": "orders"})
    assert reborn["public_key"] != key


async def test_explain(api: Api) -> None:
    await api.ok("POST", "/admin/v1/accounts", {"name": "orders"})
    await api.ok("POST", "/admin/v1/roles", WRITER)
    alice = await api.user("alice")
    await api.user("bob")
    await api.group("eng", [alice])
    binding = await api.ok(
        "POST", "/admin/v1/bindings", {"account": "orders", "role": "writer", "group": "eng"}
    )

    async def ask(user: str, subject: str, op: str = "pub") -> dict[str, Any]:
        return await api.ok(
            "GET",
            f"/admin/v1/explain?user={user}&account=orders&subject={subject}&op={op}",
            token="admin:read",
        )

    yes = await ask("alice", "orders.eu.new")
    assert yes["allowed"] is True
    assert yes["rule"] == {"role": "writer", "kind": "allow", "pattern": "orders.>"}
    assert "eng" in yes["explanation"] and str(binding["id"]) in yes["explanation"]
    assert yes["grants"] == [
        {
            "group": "eng",
            "group_id": yes["grants"][0]["group_id"],
            "binding_id": binding["id"],
            "role": "writer",
        }
    ]
    no = await ask("alice", "orders.admin.reset")
    assert no["allowed"] is False and no["rule"]["kind"] == "deny"
    assert "orders.admin.>" in no["explanation"]
    other = await ask("alice", "billing.x")
    assert other["allowed"] is False and other["rule"]["kind"] == "default"
    reply = await ask("alice", "_INBOX.abc", "sub")
    assert reply["allowed"] is True
    stranger = await ask("bob", "orders.eu.new")
    assert stranger["allowed"] is False and "no binding" in stranger["explanation"]
    status, body = await api.call(
        "GET",
        "/admin/v1/explain?user=alice&account=orders&subject=orders.*&op=pub",
        token="admin:read",
    )
    assert status == 400 and "literal" in body["message"]
    status, body = await api.call("GET", "/admin/v1/explain?user=alice", token="admin:read")
    assert status == 400 and "subject" in body["message"]


async def test_renaming_a_group_bound_by_name_revokes(api: Api, sessions: Sessions) -> None:
    await api.ok("POST", "/admin/v1/accounts", {"name": "orders"})
    await api.ok("POST", "/admin/v1/roles", WRITER)
    alice = await api.user("alice")
    eng = await api.group("eng", [alice])
    await api.ok(
        "POST", "/admin/v1/bindings", {"account": "orders", "role": "writer", "group": "eng"}
    )
    issued = await api.ok("POST", "/admin/v1/users/alice/credentials", {"account": "orders"})

    rename = {"op": "replace", "path": "displayName", "value": "ENG"}  # case only: same group
    await api.ok(
        "PATCH",
        f"/scim/v2/Groups/{eng}",
        {"schemas": [PATCH_OP], "Operations": [rename]},
        token="scim",
    )
    assert issued["user_key"] not in (await account_claims(sessions, "orders"))["nats"].get(
        "revocations", {}
    )

    rename = {"op": "replace", "path": "displayName", "value": "engineering"}
    await api.ok(
        "PATCH",
        f"/scim/v2/Groups/{eng}",
        {"schemas": [PATCH_OP], "Operations": [rename]},
        token="scim",
    )
    assert issued["user_key"] in (await account_claims(sessions, "orders"))["nats"]["revocations"]
