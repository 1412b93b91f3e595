"""``/admin/v1/roles``: CRUD, refusals that change nothing, and what a role edit does on NATS."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import select

from resolver.db.models import AccountSigningKey, AuditEntry, PushOutbox
from tests.admin.api import Api, Sessions, count, scoped_keys, state

WRITER = {
    "publish": {"allow": ["orders.>"], "deny": ["orders.admin.>"]},
    "subscribe": ["orders.>"],
    "max_ttl": "2h",
}


@pytest.fixture
def api(client: TestClient, tokens: dict[str, str]) -> Api:
    return Api(client, tokens)


async def bound_member(api: Api, role: str = "writer") -> dict[str, Any]:
    """Account ORDERS, alice in group eng bound to ``role`` there, and alice's creds."""
    account = await api.ok("POST", "/admin/v1/accounts", {"name": "ORDERS"})
    alice = await api.user("alice")
    await api.group("eng", [alice])
    binding = await api.ok(
        "POST", "/admin/v1/bindings", {"account": "ORDERS", "role": role, "group": "eng"}
    )
    creds = await api.creds("alice", "ORDERS")
    return {"account": account, "binding": binding, "creds": creds}


async def test_create_show_list(api: Api) -> None:
    resp = await api.client.post(
        "/admin/v1/roles",
        json={"name": "writer", **WRITER},
        headers={"Authorization": f"Bearer {api.tokens['admin']}"},
    )
    assert resp.status == 201 and resp.headers["Location"] == "/admin/v1/roles/writer"
    created = await resp.json()
    assert set(created) == {"name", "spec", "accounts", "created_at", "updated_at"}
    assert created["spec"]["publish"] == {"allow": ["orders.>"], "deny": ["orders.admin.>"]}
    assert created["spec"]["max_ttl"] == 7200 and created["accounts"] == []

    await api.ok("POST", "/admin/v1/roles", {"name": "reader", "subscribe": "orders.>"})
    listed = await api.ok("GET", "/admin/v1/roles", token="admin:read")
    assert [r["name"] for r in listed["roles"]] == ["reader", "writer"]

    await api.ok("POST", "/admin/v1/accounts", {"name": "ORDERS"})
    await api.ok(
        "POST", "/admin/v1/bindings", {"account": "ORDERS", "role": "writer", "group": "eng"}
    )
    shown = await api.ok("GET", "/admin/v1/roles/writer", token="admin:read")
    # A bound account uses the role even before anyone got credentials under it.
    assert shown["accounts"] == ["ORDERS"] and shown["spec"] == created["spec"]
    assert (await api.call("GET", "/admin/v1/roles/nope", token="admin:read"))[0] == 404
    assert (await api.call("GET", "/admin/v1/roles", token="scim"))[0] == 403
    assert (await api.call("GET", "/admin/v1/roles", token=None))[0] == 401


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"publish": ["a.>"]}, "role name"),
        ({"name": "bad name", "publish": ["a.>"]}, "role name"),
        ({"name": "x", "colour": "red"}, "colour"),
        ({"name": "x", "publish": ["orders..new"]}, "orders..new"),
        ({"name": "x", "publish": ["orders.>.x"]}, "orders.>.x"),
        ({"name": "x", "subscribe": {"allow": ["a"], "maybe": ["b"]}}, "maybe"),
        ({"name": "x", "max_ttl": "forever"}, "max_ttl"),
        ({"name": "x", "connection_types": ["CARRIER_PIGEON"]}, "connection_types"),
        ({"name": "x", "limits": {"subs": "many"}}, "limits.subs"),
        ({"name": "x", "responses": {"max": 1, "ttl": "5s", "extra": 1}}, "responses"),
        ({"name": "x", "jetstream": [{"stream": "S", "access": "everything"}]}, "jetstream"),
    ],
)
async def test_bad_bodies_are_400_and_change_nothing(
    api: Api, sessions: Sessions, body: dict[str, Any], fragment: str
) -> None:
    before = await state(sessions)
    status, answer = await api.call("POST", "/admin/v1/roles", body)
    assert status == 400, answer
    assert answer["error"] == "invalid_request" and fragment in answer["message"]
    assert await state(sessions) == before


async def test_unparseable_bodies(api: Api) -> None:
    for raw in (b"", b"{oops", b"[]"):
        resp = await api.client.post(
            "/admin/v1/roles",
            data=raw,
            headers={
                "Authorization": f"Bearer {api.tokens['admin']}",
                "Content-Type": "application/json",
            },
        )
        assert resp.status == 400, raw


async def test_duplicate_is_409(api: Api, sessions: Sessions) -> None:
    await api.ok("POST", "/admin/v1/roles", {"name": "writer", **WRITER})
    before = await state(sessions)
    status, answer = await api.call("POST", "/admin/v1/roles", {"name": "writer"})
    assert status == 409 and "writer" in answer["message"]
    assert await state(sessions) == before


async def test_read_scope_cannot_write(api: Api, sessions: Sessions) -> None:
    await api.ok("POST", "/admin/v1/roles", {"name": "writer", **WRITER})
    before = await state(sessions)
    for method, path, body in (
        ("POST", "/admin/v1/roles", {"name": "other"}),
        ("PUT", "/admin/v1/roles/writer", {"publish": ["x"]}),
        ("DELETE", "/admin/v1/roles/writer", None),
    ):
        assert (await api.call(method, path, body, token="admin:read"))[0] == 403, path
        assert (await api.call(method, path, body, token=None))[0] == 401, path
    assert await state(sessions) == before


async def test_edit_resigns_the_account_once_and_changes_the_template(
    api: Api, sessions: Sessions
) -> None:
    await api.ok("POST", "/admin/v1/roles", {"name": "writer", **WRITER})
    world = await bound_member(api)
    key = world["account"]["public_key"]
    signer = world["creds"]["signing_key"]
    before = scoped_keys(await api.served(key))[signer]
    assert before["template"]["pub"]["allow"] == ["orders.>"]
    pushes = await count(sessions, PushOutbox, PushOutbox.account_key == key)

    edited = {**WRITER, "publish": {"allow": ["orders.eu.>"], "deny": ["orders.admin.>"]}}
    answer = await api.ok("PUT", "/admin/v1/roles/writer", edited)
    assert answer["accounts_resigned"] == 1 and answer["accounts"] == ["ORDERS"]
    assert answer["spec"]["publish"]["allow"] == ["orders.eu.>"]
    # One new account JWT, one push: the scoped key is the same, its template is new.
    assert await count(sessions, PushOutbox, PushOutbox.account_key == key) == pushes + 1
    after = scoped_keys(await api.served(key))
    assert set(after) == {signer}
    assert after[signer]["template"]["pub"]["allow"] == ["orders.eu.>"]
    assert after[signer]["template"]["pub"]["deny"] == ["orders.admin.>"]

    # The same body again, or a change no template carries: no re-sign, no push.
    jti = (await api.served(key))["jti"]
    again = await api.ok("PUT", "/admin/v1/roles/writer", edited)
    assert again["accounts_resigned"] == 0
    described = await api.ok(
        "PUT", "/admin/v1/roles/writer", {**edited, "description": "Order writers"}
    )
    assert described["accounts_resigned"] == 0
    assert described["spec"]["description"] == "Order writers"
    assert (await api.served(key))["jti"] == jti
    assert await count(sessions, PushOutbox, PushOutbox.account_key == key) == pushes + 1
    async with sessions() as session:
        actions = list(
            await session.scalars(
                select(AuditEntry.action)
                .where(AuditEntry.target == "writer")
                .order_by(AuditEntry.id)
            )
        )
    # Two real changes (the identical PUT wrote nothing), one re-sign.
    assert actions == [
        "policy.role.create",
        "policy.role.update",
        "policy.role.resign",
        "policy.role.update",
    ]


async def test_replace_refusals_change_nothing(api: Api, sessions: Sessions) -> None:
    await api.ok("POST", "/admin/v1/roles", {"name": "writer", **WRITER})
    await bound_member(api)
    before = await state(sessions)
    for body, status, fragment in (
        ({"publish": ["orders..x"]}, 400, "orders..x"),
        ({"name": "other", "publish": ["a"]}, 400, "differs"),
        ({"colour": "red"}, 400, "colour"),
    ):
        got, answer = await api.call("PUT", "/admin/v1/roles/writer", body)
        assert got == status and fragment in answer["message"], (body, got, answer)
    assert (await api.call("PUT", "/admin/v1/roles/nope", {"publish": ["a"]}))[0] == 404
    assert await state(sessions) == before


async def test_delete_is_refused_while_bound_then_retires_the_key(
    api: Api, sessions: Sessions
) -> None:
    await api.ok("POST", "/admin/v1/roles", {"name": "writer", **WRITER})
    world = await bound_member(api)
    key = world["account"]["public_key"]
    other = await api.ok(
        "POST", "/admin/v1/bindings", {"account": "ORDERS", "role": "writer", "group": "ops"}
    )
    before = await state(sessions)
    status, answer = await api.call("DELETE", "/admin/v1/roles/writer")
    assert status == 409
    assert str(world["binding"]["id"]) in answer["message"]
    assert str(other["id"]) in answer["message"]
    assert await state(sessions) == before
    assert (await api.call("DELETE", "/admin/v1/roles/nope"))[0] == 404

    for binding in (world["binding"], other):
        await api.ok("DELETE", f"/admin/v1/bindings/{binding['id']}")
    pushes = await count(sessions, PushOutbox, PushOutbox.account_key == key)
    assert (await api.call("DELETE", "/admin/v1/roles/writer"))[0] == 204
    assert (await api.call("GET", "/admin/v1/roles/writer", token="admin:read"))[0] == 404
    # The scoped key for {writer} cannot be rebuilt: retired, and gone from the JWT.
    assert scoped_keys(await api.served(key)) == {}
    assert await count(sessions, PushOutbox, PushOutbox.account_key == key) == pushes + 1
    async with sessions() as session:
        retired = await session.scalar(
            select(AccountSigningKey.retired_at).where(
                AccountSigningKey.public_key == world["creds"]["signing_key"]
            )
        )
    assert retired is not None
    # The name is free again.
    await api.ok("POST", "/admin/v1/roles", {"name": "writer", **WRITER})
