"""Okta's provisioning requests, replayed in the order Okta sends them (DESIGN §3)."""

from __future__ import annotations

from urllib.parse import quote

from sqlalchemy import select

from resolver.db.engine import create_sessionmaker
from resolver.db.models import User
from tests.scim.conftest import GROUP, USER, Scim, patch


def lookup(user_name: str) -> str:
    expression = quote(f'userName eq "{user_name}"')
    return f"/Users?filter={expression}&startIndex=1&count=100"


async def test_user_lookup_then_create_then_deactivate(scim: Scim) -> None:
    assert (await scim.get("/Users?startIndex=1&count=1")).status == 200  # Test API credentials
    empty = await scim.get(lookup("Test.User@okta.local"))
    assert empty.status == 200 and empty.body["totalResults"] == 0
    created = await scim.post(
        "/Users",
        {
            "schemas": [USER],
            "userName": "Test.User@okta.local",
            "name": {"givenName": "Test", "familyName": "User"},
            "emails": [{"primary": True, "value": "test.user@okta.local", "type": "work"}],
            "displayName": "Test User",
            "locale": "en-US",
            "externalId": "00ujl29u0le5T6Aj10h7",
            "groups": [],
            "password": "1mz050nq",
            "active": True,
        },
    )
    assert created.status == 201, created.body
    user = created.body
    assert "password" not in user and "groups" not in user
    async with create_sessionmaker(scim.engine)() as session:
        stored = await session.scalar(select(User).where(User.id == user["id"]))
    assert stored is not None and "1mz050nq" not in str(stored.resource)

    found = await scim.get(lookup("test.user@okta.local"))
    assert [r["id"] for r in found.body["Resources"]] == [user["id"]]

    # Profile push: PUT of the whole user, read-only bits included.
    put = await scim.put(
        f"/Users/{user['id']}",
        {**user, "displayName": "Tester", "groups": [], "password": "n3w"},
    )
    assert put.status == 200 and put.body["displayName"] == "Tester"
    assert put.body["meta"]["version"] == 'W/"2"'

    deactivate = patch({"op": "replace", "value": {"active": False}})
    reply = await scim.patch(f"/Users/{user['id']}", deactivate)
    assert reply.status == 200 and reply.body["active"] is False
    assert [e.target for e in await scim.audit("scim.user.deactivate")] == [user["id"]]
    inactive = await scim.get("/Users?filter=active eq false")
    assert [r["id"] for r in inactive.body["Resources"]] == [user["id"]]
    reactivate = patch({"op": "replace", "value": {"active": True}})
    assert (await scim.patch(f"/Users/{user['id']}", reactivate)).body["active"] is True


async def test_group_push(scim: Scim) -> None:
    u1, u2, u3 = [(await scim.user(f"p{i}@okta.local"))["id"] for i in (1, 2, 3)]
    created = await scim.post(
        "/Groups", {"schemas": [GROUP], "displayName": "Test SCIMv2", "members": []}
    )
    assert created.status == 201
    gid = created.body["id"]
    same_name = patch({"op": "replace", "value": {"id": gid, "displayName": "Test SCIMv2"}})
    assert (await scim.patch(f"/Groups/{gid}", same_name)).status == 204

    add = patch(
        {"op": "add", "path": "members", "value": [{"value": u1, "display": "p1@okta.local"}]}
    )
    assert (await scim.patch(f"/Groups/{gid}", add)).status == 204
    # Okta repeats replace {id, displayName}, then remove + add in one request.
    assert (await scim.patch(f"/Groups/{gid}", same_name)).status == 204
    swap = patch(
        {"op": "remove", "path": f'members[value eq "{u1}"]'},
        {"op": "add", "path": "members", "value": [{"value": u2, "display": "p2@okta.local"}]},
    )
    assert (await scim.patch(f"/Groups/{gid}", swap)).status == 204
    assert await scim.member_ids(gid) == [u2]

    # Or PUT with the full member list.
    full = {
        "schemas": [GROUP],
        "id": gid,
        "displayName": "Test SCIMv2",
        "members": [
            {"value": u2, "display": "p2@okta.local"},
            {"value": u3, "display": "p3@okta.local"},
        ],
    }
    reply = await scim.put(f"/Groups/{gid}", full)
    assert reply.status == 200
    assert sorted(m["value"] for m in reply.body["members"]) == sorted([u2, u3])
    assert {m["display"] for m in reply.body["members"]} == {"p2@okta.local", "p3@okta.local"}
    assert (await scim.put(f"/Groups/{gid}", {**full, "members": [{"value": u3}]})).status == 200
    assert await scim.member_ids(gid) == [u3]

    events = [
        (e.details["added"], e.details["removed"]) for e in await scim.audit("scim.group.members")
    ]
    assert events == [([u1], []), ([u2], [u1]), ([u3], []), ([], [u2])]
    assert (await scim.get("/Groups?startIndex=1&count=100")).body["totalResults"] == 1
    assert (await scim.delete(f"/Groups/{gid}")).status == 204
