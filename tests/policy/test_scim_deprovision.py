"""SCIM changes revoke through the real app: removal, deactivation, deletion, group deletion.

Each case runs on SQLite and PostgreSQL, with the SCIM request shapes IdPs send, and checks
the account JWT as it is served and pushed (decoded revocations), the outbox and the audit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import event, insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from resolver.app import create_app
from resolver.appkeys import ENGINE
from resolver.auth.tokens import create_token
from resolver.config import Settings
from resolver.db.engine import create_sessionmaker
from resolver.db.models import User
from resolver.sealing import Sealer, load_master_key
from tests.policy.deprovision_world import (
    Issued,
    account_row,
    audits,
    bind,
    issue,
    outbox_count,
    refused,
    served_revocations,
    setup_operator_account,
)
from tests.scim.conftest import Scim, patch


@pytest.fixture
def sealer(settings: Settings) -> Sealer:
    return Sealer(load_master_key(settings.master_key_path))


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return create_sessionmaker(engine)


@pytest.fixture
async def account_id(
    sessions: async_sessionmaker[AsyncSession], sealer: Sealer, settings: Settings
) -> int:
    return await setup_operator_account(sessions, sealer, settings)


@pytest.fixture
async def scim(
    settings: Settings,
    engine: AsyncEngine,
    account_id: int,
    aiohttp_client: Callable[..., Any],
) -> Scim:
    async with create_sessionmaker(engine)() as session, session.begin():
        token = await create_token(session, "entra-scim", ["scim"])
    # The app shares the test's engine, so statements can be counted on it.
    http = await aiohttp_client(create_app(settings, overrides={ENGINE: engine}))
    return Scim(http, token, engine)


async def _issue(
    sessions: async_sessionmaker[AsyncSession],
    sealer: Sealer,
    settings: Settings,
    account_id: int,
    users: list[str],
    roles: list[str],
) -> dict[str, Issued]:
    async with sessions() as session, session.begin():
        return {u: await issue(session, sealer, settings, account_id, u, roles) for u in users}


async def _bind(
    sessions: async_sessionmaker[AsyncSession], account_id: int, role: str, group_id: str
) -> None:
    async with sessions() as session, session.begin():
        await bind(session, account_id, role, group_id=group_id)


async def test_patch_removing_500_members_resigns_once_in_few_statements(
    scim: Scim,
    sessions: async_sessionmaker[AsyncSession],
    sealer: Sealer,
    settings: Settings,
    account_id: int,
) -> None:
    async with sessions() as session, session.begin():
        rows = [
            {"id": f"00000000-0000-4000-8000-{i:012d}", "user_name": f"u{i}", "user_name_key": f"u{i}"}
            for i in range(600)
        ]
        await session.execute(insert(User), rows)
    ids = [row["id"] for row in rows]
    group = await scim.group("Engineering", ids)
    await _bind(sessions, account_id, "reader", group["id"])
    issued = await _issue(sessions, sealer, settings, account_id, ids, ["reader"])
    pushes = await outbox_count(sessions, account_id)
    jti = (await account_row(sessions, account_id)).jti

    statements: list[str] = []

    def capture(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    gone = ids[:500]
    body = patch({"op": "remove", "path": "members", "value": [{"value": u} for u in gone]})
    event.listen(scim.engine.sync_engine, "before_cursor_execute", capture)
    try:
        reply = await scim.patch(f"/Groups/{group['id']}", body)
    finally:
        event.remove(scim.engine.sync_engine, "before_cursor_execute", capture)
    assert reply.status in (200, 204), reply.body

    # One new account JWT, one outbox row: not one per member.
    assert await outbox_count(sessions, account_id) == pushes + 1
    assert (await account_row(sessions, account_id)).jti != jti
    served = await served_revocations(sessions, account_id)
    assert all(refused(served, issued[u]) for u in gone)
    assert not any(refused(served, issued[u]) for u in ids[500:])
    (row,) = await audits(sessions, "policy.revoke")
    assert row.details["count"] == 500 and row.actor == "entra-scim"
    # Set-based: a fixed handful of statements, however many members left.
    print("statements during the PATCH:", len(statements))
    assert len(statements) < 60, len(statements)


@pytest.mark.parametrize(
    "shape",
    [
        "entra-filter",  # Entra: one op per member, a value filter in the path
        "entra-value",  # Entra: one op, the members in the value
        "okta-replace",  # Okta: replace the whole member list
    ],
)
async def test_removal_revokes_unless_still_reached(
    scim: Scim,
    sessions: async_sessionmaker[AsyncSession],
    sealer: Sealer,
    settings: Settings,
    account_id: int,
    shape: str,
) -> None:
    alice = (await scim.user("alice@example.com"))["id"]
    bob = (await scim.user("bob@example.com"))["id"]
    carol = (await scim.user("carol@example.com"))["id"]
    g1 = (await scim.group("Readers", [alice, bob, carol]))["id"]
    g2 = (await scim.group("Auditors", [alice]))["id"]
    await _bind(sessions, account_id, "reader", g1)
    await _bind(sessions, account_id, "reader", g2)
    issued = await _issue(sessions, sealer, settings, account_id, [alice, bob, carol], ["reader"])

    if shape == "entra-filter":
        body = patch(
            {"op": "Remove", "path": f'members[value eq "{alice}"]'},
            {"op": "Remove", "path": f'members[value eq "{bob}"]'},
        )
    elif shape == "entra-value":
        body = patch({"op": "Remove", "path": "members", "value": [{"value": alice}, {"value": bob}]})
    else:
        body = patch({"op": "replace", "path": "members", "value": [{"value": carol}]})
    reply = await scim.patch(f"/Groups/{g1}", body)
    assert reply.status in (200, 204), reply.body

    served = await served_revocations(sessions, account_id)
    assert refused(served, issued[bob])
    assert not refused(served, issued[alice])  # still a reader through Auditors
    assert not refused(served, issued[carol])


@pytest.mark.parametrize(
    "body",
    [
        {"op": "Replace", "path": "active", "value": "False"},  # Entra
        {"op": "replace", "value": {"active": False}},  # Okta
    ],
)
async def test_deactivation_revokes_everywhere(
    scim: Scim,
    sessions: async_sessionmaker[AsyncSession],
    sealer: Sealer,
    settings: Settings,
    account_id: int,
    body: dict[str, Any],
) -> None:
    alice = (await scim.user("alice@example.com"))["id"]
    bob = (await scim.user("bob@example.com"))["id"]
    g1 = (await scim.group("Readers", [alice, bob]))["id"]
    await _bind(sessions, account_id, "reader", g1)
    issued = await _issue(sessions, sealer, settings, account_id, [alice, bob], ["reader"])
    pushes = await outbox_count(sessions, account_id)

    reply = await scim.patch(f"/Users/{alice}", patch(body))
    assert reply.status == 200, reply.body
    served = await served_revocations(sessions, account_id)
    assert refused(served, issued[alice]) and not refused(served, issued[bob])
    assert await outbox_count(sessions, account_id) == pushes + 1

    # A second deactivation-shaped PATCH changes nothing more.
    reply = await scim.patch(f"/Users/{alice}", patch(body))
    assert reply.status == 200
    assert await outbox_count(sessions, account_id) == pushes + 1


async def test_user_deletion_revokes(
    scim: Scim,
    sessions: async_sessionmaker[AsyncSession],
    sealer: Sealer,
    settings: Settings,
    account_id: int,
) -> None:
    alice = (await scim.user("alice@example.com"))["id"]
    bob = (await scim.user("bob@example.com"))["id"]
    g1 = (await scim.group("Readers", [alice, bob]))["id"]
    await _bind(sessions, account_id, "reader", g1)
    issued = await _issue(sessions, sealer, settings, account_id, [alice, bob], ["reader"])

    assert (await scim.delete(f"/Users/{alice}")).status == 204
    served = await served_revocations(sessions, account_id)
    assert refused(served, issued[alice]) and not refused(served, issued[bob])
    (row,) = await audits(sessions, "policy.revoke")
    assert row.details["users"] == [alice]


async def test_group_deletion_revokes_members_not_reached_otherwise(
    scim: Scim,
    sessions: async_sessionmaker[AsyncSession],
    sealer: Sealer,
    settings: Settings,
    account_id: int,
) -> None:
    alice = (await scim.user("alice@example.com"))["id"]
    bob = (await scim.user("bob@example.com"))["id"]
    g1 = (await scim.group("Readers", [alice, bob]))["id"]
    g2 = (await scim.group("Auditors", [alice]))["id"]
    await _bind(sessions, account_id, "reader", g1)
    await _bind(sessions, account_id, "reader", g2)
    issued = await _issue(sessions, sealer, settings, account_id, [alice, bob], ["reader"])

    assert (await scim.delete(f"/Groups/{g1}")).status == 204
    served = await served_revocations(sessions, account_id)
    assert refused(served, issued[bob]) and not refused(served, issued[alice])


async def test_membership_gain_and_unbound_group_change_nothing(
    scim: Scim,
    sessions: async_sessionmaker[AsyncSession],
    sealer: Sealer,
    settings: Settings,
    account_id: int,
) -> None:
    alice = (await scim.user("alice@example.com"))["id"]
    g1 = (await scim.group("Readers", [alice]))["id"]
    unbound = (await scim.group("Lunch", [alice]))["id"]
    await _bind(sessions, account_id, "reader", g1)
    await _issue(sessions, sealer, settings, account_id, [alice], ["reader"])
    pushes = await outbox_count(sessions, account_id)
    bob = (await scim.user("bob@example.com"))["id"]
    add = patch({"op": "add", "path": "members", "value": [{"value": bob}]})
    assert (await scim.patch(f"/Groups/{g1}", add)).status in (200, 204)
    leave = patch({"op": "remove", "path": f'members[value eq "{alice}"]'})
    assert (await scim.patch(f"/Groups/{unbound}", leave)).status in (200, 204)
    assert await outbox_count(sessions, account_id) == pushes
    assert await served_revocations(sessions, account_id) == {}
