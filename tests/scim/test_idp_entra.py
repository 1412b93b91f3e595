"""Microsoft Entra's provisioning requests, replayed in the order Entra sends them (DESIGN §3)."""

from __future__ import annotations

import uuid
from urllib.parse import quote

from tests.scim.conftest import ENTERPRISE, GROUP, USER, Scim, patch

ENTRA_GROUP_SCHEMA = "http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/2.0/Group"


def q(expression: str) -> str:
    return quote(expression, safe="=&")


async def test_test_connection_with_random_ids_is_an_empty_list(scim: Scim) -> None:
    random = str(uuid.uuid4())
    for path in (
        "/Users?filter=" + q(f'userName eq "{random}"'),
        "/Users?filter=" + q(f'id eq "{random}"'),
        "/Groups?excludedAttributes=members&filter=" + q(f'displayName eq "{random}"'),
    ):
        reply = await scim.get(path)
        assert reply.status == 200, reply.body
        assert reply.body["totalResults"] == 0 and reply.body["Resources"] == []


async def test_user_lifecycle(scim: Scim) -> None:
    user_name = "Test_User_ab6490ee-1e48-479e-a20b-2d77186b5dd1"
    lookup = await scim.get("/Users?filter=" + q(f'userName eq "{user_name}"'))
    assert lookup.body["totalResults"] == 0
    created = await scim.post(
        "/Users",
        {
            "schemas": [USER, ENTERPRISE],
            "externalId": "jyoung",
            "userName": user_name,
            "active": True,
            "emails": [{"primary": True, "type": "work", "value": "Test_User@testuser.com"}],
            "meta": {"resourceType": "User"},
            "name": {
                "formatted": "givenName familyName",
                "familyName": "familyName",
                "givenName": "givenName",
            },
            "roles": [],
        },
    )
    assert created.status == 201, created.body
    user_id = created.body["id"]
    manager = await scim.user("manager@example.com")

    # Unquoted filter value.
    by_external = await scim.get("/Users?filter=externalId eq jyoung")
    assert [r["id"] for r in by_external.body["Resources"]] == [user_id]

    # No-path replace with dotted and URN keys, capitalised op, string boolean.
    update = patch(
        {
            "op": "Replace",
            "value": {
                "displayName": "Babs",
                "name.givenName": "Barbara",
                f"{ENTERPRISE}:department": "Sales",
                "active": "True",
            },
        },
        {"op": "Add", "path": 'emails[type eq "work"].value', "value": "babs@example.com"},
        {"op": "Add", "path": f"{ENTERPRISE}:manager", "value": manager["id"]},
        {"op": "Replace", "path": "userName", "value": "babs@example.com"},
    )
    reply = await scim.patch(f"/Users/{user_id}", update)
    assert reply.status == 200, reply.body
    user = reply.body
    assert user["displayName"] == "Babs" and user["name"]["givenName"] == "Barbara"
    assert user["name"]["familyName"] == "familyName" and user["active"] is True
    assert user[ENTERPRISE]["department"] == "Sales"
    assert user[ENTERPRISE]["manager"]["value"] == manager["id"]
    assert user["emails"] == [{"value": "babs@example.com", "type": "work", "primary": True}]
    assert user["userName"] == "babs@example.com"

    # Deactivation with Entra's string boolean: an event.
    disable = patch({"op": "Replace", "path": "active", "value": "False"})
    reply = await scim.patch(f"/Users/{user_id}", disable)
    assert reply.status == 200 and reply.body["active"] is False
    assert [e.target for e in await scim.audit("scim.user.deactivate")] == [user_id]

    # The hard delete, 30 days later.
    assert (await scim.delete(f"/Users/{user_id}")).status == 204
    assert [e.target for e in await scim.audit("scim.user.delete")] == [user_id]


async def test_group_lifecycle(scim: Scim) -> None:
    u1, u2, u3 = [(await scim.user(f"u{i}@example.com"))["id"] for i in (1, 2, 3)]
    lookup = await scim.get(
        "/Groups?excludedAttributes=members&filter=" + q('displayName eq "Group1"')
    )
    assert lookup.body["totalResults"] == 0
    created = await scim.post(
        "/Groups",
        {
            "schemas": [GROUP, ENTRA_GROUP_SCHEMA],
            "externalId": "8aa1a0c0-c4c3-4bc0-b4a5-2ef676900159",
            "displayName": "Group1",
            "meta": {"resourceType": "Group"},
        },
    )
    assert created.status == 201, created.body
    assert created.body["schemas"] == [GROUP]
    gid = created.body["id"]
    got = await scim.get(f"/Groups/{gid}?excludedAttributes=members")
    assert got.status == 200 and "members" not in got.body

    add = patch(
        {"op": "Add", "path": "members", "value": [{"value": u1}, {"value": u2}, {"value": u3}]}
    )
    reply = await scim.patch(f"/Groups/{gid}", add)
    assert reply.status == 204 and reply.body is None
    member_check = f'id eq "{gid}" and members eq "{u2}"'
    found = await scim.get(f"/Groups?excludedAttributes=members&filter={q(member_check)}")
    assert [r["id"] for r in found.body["Resources"]] == [gid]

    # Legacy removal shape: only the listed member goes, never the whole group.
    legacy = patch({"op": "Remove", "path": "members", "value": [{"value": u1}]})
    assert (await scim.patch(f"/Groups/{gid}", legacy)).status == 204
    assert await scim.member_ids(gid) == sorted([u2, u3])
    # The newer shape.
    current = patch({"op": "Remove", "path": f'members[value eq "{u2}"]'})
    assert (await scim.patch(f"/Groups/{gid}", current)).status == 204
    assert await scim.member_ids(gid) == [u3]
    gone = await scim.get(f"/Groups?excludedAttributes=members&filter={q(member_check)}")
    assert gone.body["totalResults"] == 0

    rename = patch({"op": "Replace", "path": "displayName", "value": "Group1 updated"})
    assert (await scim.patch(f"/Groups/{gid}", rename)).status == 204
    assert (await scim.get(f"/Groups/{gid}")).body["displayName"] == "Group1 updated"

    events = [
        (e.details["added"], e.details["removed"]) for e in await scim.audit("scim.group.members")
    ]
    assert events == [([u1, u2, u3], []), ([], [u1]), ([], [u2])]
    assert (await scim.delete(f"/Groups/{gid}")).status == 204
