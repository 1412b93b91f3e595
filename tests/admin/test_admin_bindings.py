"""``/admin/v1/bindings``: CRUD, refusals that change nothing, and revocation on removal."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import select

from resolver.db.models import AuditEntry, Binding, PushOutbox
from tests.admin.api import Api, Sessions, count, state

WRITER = {"name": "writer", "publish": ["orders.>"], "subscribe": ["orders.>"]}
READER = {"name": "reader", "subscribe": ["orders.>"]}


@pytest.fixture
def api(client: TestClient, tokens: dict[str, str]) -> Api:
    return Api(client, tokens)


@pytest.fixture
async def world(api: Api) -> dict[str, Any]:
    """Account ORDERS, roles writer and reader; alice in eng, bob in eng and ops."""
    account = await api.ok("POST", "/admin/v1/accounts", {"name": "ORDERS"})
    await api.ok("POST", "/admin/v1/roles", WRITER)
    await api.ok("POST", "/admin/v1/roles", READER)
    alice = await api.user("alice")
    bob = await api.user("bob")
    eng = await api.group("eng", [alice, bob])
    ops = await api.group("ops", [bob])
    return {"key": account["public_key"], "alice": alice, "bob": bob, "eng": eng, "ops": ops}


async def test_create_show_list_and_filters(api: Api, world: dict[str, Any]) -> None:
    resp = await api.client.post(
        "/admin/v1/bindings",
        json={"account": "ORDERS", "role": "writer", "group": "eng"},
        headers={"Authorization": f"Bearer {api.tokens['admin']}"},
    )
    assert resp.status == 201
    by_name = await resp.json()
    assert resp.headers["Location"] == f"/admin/v1/bindings/{by_name['id']}"
    assert set(by_name) == {
        "id",
        "account",
        "role",
        "group_id",
        "group",
        "claim",
        "ends_at",
        "created_at",
    }
    assert (by_name["account"], by_name["role"], by_name["group"]) == ("ORDERS", "writer", "eng")
    assert by_name["group_id"] is None and by_name["claim"] is None and by_name["ends_at"] is None
    # The account may be named by its public key too.
    by_id = await api.ok(
        "POST",
        "/admin/v1/bindings",
        {"account": world["key"], "role": "reader", "group_id": world["ops"]},
    )
    assert by_id["group"] == "ops" and by_id["group_id"] == world["ops"]
    timed = await api.ok(
        "POST",
        "/admin/v1/bindings",
        {
            "account": "ORDERS",
            "role": "reader",
            "claim": {"name": "roles", "value": "orders.ci"},
            "ends_at": "2099-01-01T01:00:00+01:00",
        },
    )
    # Stored and shown in UTC.
    assert timed["ends_at"] == "2099-01-01T00:00:00+00:00"

    async def ids(query: str) -> list[int]:
        listed = await api.ok("GET", f"/admin/v1/bindings{query}", token="admin:read")
        return [b["id"] for b in listed["bindings"]]

    assert await ids("") == [by_name["id"], by_id["id"], timed["id"]]
    assert await ids("?role=reader") == [by_id["id"], timed["id"]]
    assert await ids("?group=ENG") == [by_name["id"]]  # displayName matches case-blind
    assert await ids("?group=ops") == [by_id["id"]]  # a binding by id is found by name
    assert await ids(f"?group={world['ops']}") == [by_id["id"]]
    assert await ids("?account=ORDERS&role=writer") == [by_name["id"]]
    assert (await api.call("GET", "/admin/v1/bindings?account=nope", token="admin:read"))[0] == 404
    shown = await api.ok("GET", f"/admin/v1/bindings/{timed['id']}", token="admin:read")
    assert shown == timed


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"account": "ORDERS", "role": "writer"}, 400, "exactly one"),
        (
            {"account": "ORDERS", "role": "writer", "group": "g", "claim": None, "group_id": "x"},
            400,
            "exactly one",
        ),
        ({"account": "ORDERS", "role": ["writer"], "group": "g"}, 400, "role"),
        ({"account": 5, "role": "writer", "group": "g"}, 400, "account"),
        ({"account": "ORDERS", "role": "writer", "group": "  "}, 400, "group"),
        ({"account": "ORDERS", "role": "writer", "claim": "roles=x"}, 400, "claim"),
        ({"account": "ORDERS", "role": "writer", "claim": {"name": "roles"}}, 400, "claim"),
        (
            {"account": "ORDERS", "role": "writer", "group": "g", "until": "2099-01-01Z"},
            400,
            "until",
        ),
        ({"account": "ORDERS", "role": "writer", "group": "g", "ends_at": "soon"}, 400, "ends_at"),
        ({"account": "ORDERS", "role": "writer", "group": "g", "ends_at": 7}, 400, "ends_at"),
        (
            {"account": "ORDERS", "role": "writer", "group": "g", "ends_at": "2099-01-01T00:00:00"},
            400,
            "zone",
        ),
        (
            {
                "account": "ORDERS",
                "role": "writer",
                "group": "g",
                "ends_at": "2001-01-01T00:00:00Z",
            },
            400,
            "future",
        ),
        ({"account": "nope", "role": "writer", "group": "g"}, 404, "nope"),
        ({"account": "ORDERS", "role": "nope", "group": "g"}, 404, "nope"),
        ({"account": "ORDERS", "role": "writer", "group_id": "no-such-id"}, 404, "no-such-id"),
        ({"account": "SYS", "role": "writer", "group": "g"}, 409, "system account"),
    ],
)
async def test_refusals_change_nothing(
    api: Api,
    sessions: Sessions,
    world: dict[str, Any],
    body: dict[str, Any],
    status: int,
    fragment: str,
) -> None:
    before = await state(sessions)
    got, answer = await api.call("POST", "/admin/v1/bindings", body)
    assert got == status, answer
    assert fragment in answer["message"]
    assert await state(sessions) == before


async def test_duplicate_is_409(api: Api, sessions: Sessions, world: dict[str, Any]) -> None:
    first = await api.ok(
        "POST", "/admin/v1/bindings", {"account": "ORDERS", "role": "writer", "group": "eng"}
    )
    before = await state(sessions)
    # The same grant, the group name spelt differently: still the same grant.
    status, answer = await api.call(
        "POST", "/admin/v1/bindings", {"account": "ORDERS", "role": "writer", "group": "ENG"}
    )
    assert status == 409 and str(first["id"]) in answer["message"]
    assert await state(sessions) == before
    # Another role for the same group is another grant.
    await api.ok(
        "POST", "/admin/v1/bindings", {"account": "ORDERS", "role": "reader", "group": "eng"}
    )


async def test_scopes_and_404s(api: Api, sessions: Sessions, world: dict[str, Any]) -> None:
    binding = await api.ok(
        "POST", "/admin/v1/bindings", {"account": "ORDERS", "role": "writer", "group": "eng"}
    )
    path = f"/admin/v1/bindings/{binding['id']}"
    before = await state(sessions)
    for method, where, body in (
        ("POST", "/admin/v1/bindings", {"account": "ORDERS", "role": "reader", "group": "x"}),
        ("PATCH", path, {"ends_at": None}),
        ("DELETE", path, None),
    ):
        assert (await api.call(method, where, body, token="admin:read"))[0] == 403
        assert (await api.call(method, where, body, token="scim"))[0] == 403
        assert (await api.call(method, where, body, token=None))[0] == 401
    assert (await api.call("GET", "/admin/v1/bindings", token="scim"))[0] == 403
    assert await state(sessions) == before

    for method, body in (("GET", None), ("PATCH", {"ends_at": None}), ("DELETE", None)):
        status, answer = await api.call(method, "/admin/v1/bindings/999999", body)
        assert status == 404 and "999999" in answer["message"], method
        assert (await api.call(method, "/admin/v1/bindings/x1", body))[0] == 400
    assert await state(sessions) == before


async def test_delete_revokes_who_loses_the_account(
    api: Api, sessions: Sessions, world: dict[str, Any]
) -> None:
    eng = await api.ok(
        "POST", "/admin/v1/bindings", {"account": "ORDERS", "role": "writer", "group": "eng"}
    )
    await api.ok(
        "POST", "/admin/v1/bindings", {"account": "ORDERS", "role": "writer", "group": "ops"}
    )
    alice = await api.creds("alice", "ORDERS")
    bob = await api.creds("bob", "ORDERS")
    assert alice["roles"] == bob["roles"] == ["writer"]
    key = world["key"]
    pushes = await count(sessions, PushOutbox, PushOutbox.account_key == key)

    assert (await api.call("DELETE", f"/admin/v1/bindings/{eng['id']}"))[0] == 204
    revoked = (await api.served(key))["nats"].get("revocations", {})
    # alice reached ORDERS only through eng; bob still does through ops.
    assert alice["user_key"] in revoked and bob["user_key"] not in revoked
    assert await count(sessions, PushOutbox, PushOutbox.account_key == key) == pushes + 1
    assert (await api.call("GET", f"/admin/v1/bindings/{eng['id']}", token="admin:read"))[0] == 404
    assert (await api.call("DELETE", f"/admin/v1/bindings/{eng['id']}"))[0] == 404
    status, answer = await api.call(
        "POST", "/admin/v1/users/alice/credentials", {"account": "ORDERS"}
    )
    assert status == 409 and "binding" in answer["message"]
    async with sessions() as session:
        actions = list(
            await session.scalars(
                select(AuditEntry.action).where(
                    AuditEntry.action.in_(["policy.binding.delete", "policy.revoke"])
                )
            )
        )
    assert sorted(actions) == ["policy.binding.delete", "policy.revoke"]


async def test_delete_with_nobody_to_revoke_does_not_resign(
    api: Api, sessions: Sessions, world: dict[str, Any]
) -> None:
    eng = await api.ok(
        "POST", "/admin/v1/bindings", {"account": "ORDERS", "role": "writer", "group": "eng"}
    )
    jti = (await api.served(world["key"]))["jti"]
    assert (await api.call("DELETE", f"/admin/v1/bindings/{eng['id']}"))[0] == 204
    assert (await api.served(world["key"]))["jti"] == jti


async def test_moving_the_end_into_the_past_revokes(
    api: Api, sessions: Sessions, world: dict[str, Any]
) -> None:
    eng = await api.ok(
        "POST",
        "/admin/v1/bindings",
        {"account": "ORDERS", "role": "writer", "group": "eng", "ends_at": "2099-01-01T00:00:00Z"},
    )
    alice = await api.creds("alice", "ORDERS")
    path = f"/admin/v1/bindings/{eng['id']}"
    before = await state(sessions)
    for body, fragment in (
        ({}, "ends_at"),
        ({"ends_at": "soon"}, "ends_at"),
        ({"ends_at": "2099-01-01T00:00:00"}, "zone"),
        ({"ends_at": None, "role": "reader"}, "unknown"),
    ):
        status, answer = await api.call("PATCH", path, body)
        assert status == 400 and fragment in answer["message"], (body, answer)
    assert await state(sessions) == before

    later = await api.ok("PATCH", path, {"ends_at": "2098-06-01T00:00:00Z"})
    assert later["ends_at"] == "2098-06-01T00:00:00+00:00"
    assert (await api.served(world["key"]))["nats"].get("revocations", {}) == {}
    # The same end again: nothing to do, nothing audited.
    audit = await count(sessions, AuditEntry)
    await api.ok("PATCH", path, {"ends_at": "2098-06-01T00:00:00Z"})
    assert await count(sessions, AuditEntry) == audit

    ended = await api.ok("PATCH", path, {"ends_at": "2020-01-01T00:00:00Z"})
    assert ended["ends_at"].startswith("2020-01-01")
    assert alice["user_key"] in (await api.served(world["key"]))["nats"]["revocations"]
    async with sessions() as session:
        binding = await session.get_one(Binding, eng["id"])
    # Handled at once: the end-time job has nothing left to do for it.
    assert binding.lapsed_at is not None

    reopened = await api.ok("PATCH", path, {"ends_at": None})
    assert reopened["ends_at"] is None
    again = await api.creds("alice", "ORDERS")
    assert again["user_key"] != alice["user_key"]
