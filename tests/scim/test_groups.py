"""/scim/v2/Groups over HTTP: membership as a diff, atomic PATCH, events, large groups."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, func, select

from resolver.appkeys import ENGINE
from resolver.db.engine import create_sessionmaker
from resolver.db.models import Group, GroupMember
from tests.scim.conftest import GROUP, Scim, patch


async def test_create_get_replace_delete(scim: Scim) -> None:
    alice = await scim.user("alice@example.com", displayName="Alice")
    created = await scim.post(
        "/Groups",
        {
            "schemas": [GROUP],
            "displayName": "Ops",
            "externalId": "okta-1",
            "members": [{"value": alice["id"], "display": "alice@example.com"}],
        },
    )
    assert created.status == 201 and created.headers["ETag"] == 'W/"1"'
    group = created.body
    assert group["members"] == [
        {
            "value": alice["id"],
            "$ref": alice["meta"]["location"],
            "type": "User",
            "display": "alice@example.com",
        }
    ]
    assert group["meta"]["location"].endswith(f"/scim/v2/Groups/{group['id']}")
    clash = await scim.post("/Groups", {"schemas": [GROUP], "displayName": "ops"})
    assert clash.status == 409 and clash.scim_type == "uniqueness"

    lean = await scim.get(f"/Groups/{group['id']}?excludedAttributes=members")
    assert "members" not in lean.body and lean.body["displayName"] == "Ops"
    user = await scim.get(f"/Users/{alice['id']}")
    assert user.body["groups"][0]["value"] == group["id"]

    replaced = await scim.put(
        f"/Groups/{group['id']}", {"schemas": [GROUP], "displayName": "Ops 2", "members": []}
    )
    assert replaced.status == 200 and "members" not in replaced.body
    assert replaced.body["displayName"] == "Ops 2"
    assert (await scim.delete(f"/Groups/{group['id']}")).status == 204
    assert (await scim.get(f"/Groups/{group['id']}")).status == 404
    assert (await scim.get(f"/Users/{alice['id']}")).status == 200


async def test_re_adding_a_member_is_a_no_op(scim: Scim) -> None:
    user = await scim.user("u@example.com")
    group = await scim.group("G", [user["id"]])
    again = patch({"op": "add", "path": "members", "value": [{"value": user["id"]}]})
    assert (await scim.patch(f"/Groups/{group['id']}", again)).status == 204
    assert await scim.member_ids(group["id"]) == [user["id"]]
    changes = await scim.audit("scim.group.members")
    assert len(changes) == 1  # the create; the no-op re-add changed nothing


async def test_unknown_member_is_400_and_changes_nothing(scim: Scim) -> None:
    a, b = await scim.user("a@example.com"), await scim.user("b@example.com")
    group = await scim.group("G", [a["id"]])
    body = patch(
        {"op": "replace", "path": "displayName", "value": "Renamed"},
        {"op": "remove", "path": f'members[value eq "{a["id"]}"]'},
        {"op": "add", "path": "members", "value": [{"value": b["id"]}, {"value": "nobody"}]},
    )
    reply = await scim.patch(f"/Groups/{group['id']}", body)
    assert reply.status == 400 and reply.scim_type == "invalidValue"
    assert "nobody" in reply.body["detail"]
    after = await scim.get(f"/Groups/{group['id']}")
    assert after.body["displayName"] == "G" and after.body["meta"]["version"] == 'W/"1"'
    assert await scim.member_ids(group["id"]) == [a["id"]]
    bad_put = await scim.put(
        f"/Groups/{group['id']}",
        {"schemas": [GROUP], "displayName": "G", "members": [{"value": "ghost"}]},
    )
    assert bad_put.status == 400 and bad_put.scim_type == "invalidValue"
    bad_post = await scim.post(
        "/Groups", {"schemas": [GROUP], "displayName": "H", "members": [{"value": "ghost"}]}
    )
    assert bad_post.status == 400
    assert (await scim.get('/Groups?filter=displayName eq "H"')).body["totalResults"] == 0


async def test_patch_is_atomic(scim: Scim) -> None:
    a = await scim.user("a@example.com")
    group = await scim.group("G")
    body = patch(
        {"op": "add", "path": "members", "value": [{"value": a["id"]}]},
        {"op": "replace", "path": "displayName", "value": "New"},
        {"op": "replace", "path": "id", "value": "another-id"},
    )
    reply = await scim.patch(f"/Groups/{group['id']}", body)
    assert reply.status == 400 and reply.scim_type == "mutability"
    assert await scim.member_ids(group["id"]) == []
    assert (await scim.get(f"/Groups/{group['id']}")).body["displayName"] == "G"


async def test_membership_diff_and_events_reach_the_audit_log(scim: Scim) -> None:
    a, b, c = [await scim.user(f"{n}@example.com") for n in "abc"]
    group = await scim.group("G", [a["id"], b["id"]])
    put = await scim.put(
        f"/Groups/{group['id']}",
        {
            "schemas": [GROUP],
            "displayName": "G",
            "members": [{"value": b["id"]}, {"value": c["id"]}],
        },
        headers={"X-Request-ID": "req-put-1"},
    )
    assert put.status == 200
    deactivate = patch({"op": "replace", "path": "active", "value": False})
    await scim.patch(f"/Users/{b['id']}", deactivate, headers={"X-Request-ID": "req-deact"})
    await scim.delete(f"/Users/{c['id']}", headers={"X-Request-ID": "req-del"})
    await scim.delete(f"/Groups/{group['id']}", headers={"X-Request-ID": "req-gdel"})

    members = await scim.audit("scim.group.members")
    assert [(e.details["added"], e.details["removed"]) for e in members] == [
        ([a["id"], b["id"]], []),
        ([c["id"]], [a["id"]]),
    ]
    assert members[1].actor == "okta-scim" and members[1].request_id == "req-put-1"
    (deact,) = await scim.audit("scim.user.deactivate")
    assert deact.target == b["id"] and deact.request_id == "req-deact"
    (deleted,) = await scim.audit("scim.user.delete")
    assert deleted.target == c["id"] and deleted.details["groups"] == [group["id"]]
    (gone,) = await scim.audit("scim.group.delete")
    assert gone.target == group["id"] and gone.actor == "okta-scim"


async def test_event_hooks_run_inside_the_transaction(scim: Scim) -> None:
    from resolver.appkeys import SCIM_EVENTS

    seen: list[Any] = []

    async def failing_hook(session: Any, actor: Any, event: Any) -> None:
        seen.append(event)
        raise RuntimeError("policy refused")

    user = await scim.user("hook@example.com")
    group = await scim.group("Hooked")
    scim.http.app[SCIM_EVENTS].subscribe(failing_hook)
    add = patch({"op": "add", "path": "members", "value": [{"value": user["id"]}]})
    reply = await scim.patch(f"/Groups/{group['id']}", add)
    assert reply.status == 500 and "policy refused" not in str(reply.body)
    assert seen and seen[0].added == (user["id"],)
    assert await scim.member_ids(group["id"]) == []


async def _bulk_members(scim: Scim, group_id: str, count: int) -> list[str]:
    """Insert users and memberships directly (fast): the HTTP path is tested elsewhere."""
    from resolver.db.models import User, new_uuid

    ids = [new_uuid() for _ in range(count)]
    async with create_sessionmaker(scim.engine)() as session, session.begin():
        session.add_all(
            User(id=i, user_name=f"m{n}", user_name_key=f"m{n}", resource={"userName": f"m{n}"})
            for n, i in enumerate(ids)
        )
        await session.flush()
        session.add_all(GroupMember(group_id=group_id, user_id=i) for i in ids)
    return ids


async def test_single_member_change_never_reads_the_member_list(scim: Scim) -> None:
    group = await scim.group("Big")
    existing = await _bulk_members(scim, group["id"], 500)
    newcomer = await scim.user("new@example.com")
    statements: list[str] = []

    def capture(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    engine = scim.http.app[ENGINE].sync_engine
    event.listen(engine, "before_cursor_execute", capture)
    try:
        for body in (
            patch({"op": "add", "path": "members", "value": [{"value": newcomer["id"]}]}),
            patch({"op": "remove", "path": f'members[value eq "{existing[7]}"]'}),
            patch(
                {"op": "replace", "value": {"id": group["id"], "displayName": "Big"}},
                {"op": "remove", "path": f'members[value eq "{existing[8]}"]'},
                {"op": "add", "path": "members", "value": [{"value": existing[9]}]},
            ),
        ):
            assert (await scim.patch(f"/Groups/{group['id']}", body)).status == 204
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    touching = [s for s in statements if "group_members" in s]
    assert touching
    for statement in touching:
        # Every statement on the join table is bounded by the given ids (or inserts rows).
        bounded = "json_each" in statement or "json_array_elements" in statement
        assert bounded or statement.startswith("INSERT INTO group_members"), statement
    async with create_sessionmaker(scim.engine)() as session:
        count = await session.scalar(
            select(func.count()).select_from(GroupMember).where(GroupMember.group_id == group["id"])
        )
        version = await session.scalar(select(Group.version).where(Group.id == group["id"]))
    assert count == 500 + 1 - 2 and version == 4


async def test_large_group_get_pages_members_out(scim: Scim) -> None:
    group = await scim.group("Wide")
    ids = await _bulk_members(scim, group["id"], 3000)
    full = await scim.get(f"/Groups/{group['id']}")
    assert sorted(m["value"] for m in full.body["members"]) == sorted(ids)
    lean = await scim.get('/Groups?excludedAttributes=members&filter=displayName eq "Wide"')
    assert "members" not in lean.body["Resources"][0]
    values_only = await scim.get(f"/Groups/{group['id']}?attributes=members.value")
    assert set(values_only.body["members"][0]) == {"value"}
