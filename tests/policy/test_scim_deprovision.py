"""SCIM changes revoke through the real app: removal, deactivation, deletion, group deletion.

Each case runs on SQLite and PostgreSQL, with the SCIM request shapes IdPs send, and checks
the account JWT as it is served and pushed (decoded revocations), the outbox and the audit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import nats
import pytest
from aiohttp import ClientSession
from sqlalchemy import event, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from resolver.accounts.operator import issue_system_user_creds
from resolver.app import create_app
from resolver.appkeys import ENGINE
from resolver.auth.tokens import create_token
from resolver.bootstrap import write_private
from resolver.config import ServerSettings, Settings
from resolver.db.engine import create_sessionmaker
from resolver.db.models import Account, Operator, User
from resolver.push.state import PUSH_CONNECTION
from resolver.sealing import Sealer
from tests.accounts.conftest import sealer, sessions  # noqa: F401  (fixtures)
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
from tests.push.conftest import push_settings, wait_for
from tests.scim.conftest import Scim, patch
from tests.support.nats import NatsServer, url_resolver_config
from tests.support.ports import free_port


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
            {
                "id": f"00000000-0000-4000-8000-{i:012d}",
                "user_name": f"u{i}",
                "user_name_key": f"u{i}",
            }
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
        body = patch(
            {"op": "Remove", "path": "members", "value": [{"value": alice}, {"value": bob}]}
        )
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


@pytest.mark.e2e
async def test_scim_removal_drops_the_live_connection_on_a_real_nats_server(
    settings: Settings,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    sealer: Sealer,
    tmp_path: Path,
    aiohttp_server: Callable[..., Any],
) -> None:
    """nats-server on ``resolver: URL(...)`` → this service; SCIM removes two users from G1.

    Alice (only in G1) is disconnected and refused on reconnect; Bob, still in G2 bound to
    the same account, keeps his connection.
    """
    base = replace(settings, server=ServerSettings(host="127.0.0.1", port=free_port()))
    acc = await setup_operator_account(sessions, sealer, base)
    async with sessions() as session, session.begin():
        operator = await session.scalar(select(Operator))
        system = await session.scalar(select(Account).where(Account.is_system.is_(True)))
        sys_creds = tmp_path / "sys.creds"
        write_private(sys_creds, await issue_system_user_creds(session, sealer))
        token = await create_token(session, "entra-scim", ["scim"])
    server = NatsServer(tmp_path / "nats", "n1")
    server.configure(
        url_resolver_config(
            operator_jwt=operator.jwt or "",
            system_account_key=system.public_key,
            resolver_base_url=base.public_url,
            port=server.port,
            name="n1",
        )
    )
    app = create_app(push_settings(base, server.url, sys_creds))
    # The URL resolver refuses to start unless the service answers: service first.
    web_server = await aiohttp_server(app, host="127.0.0.1", port=base.server.port)
    clients: list[Any] = []
    try:
        await server.start_async()
        await wait_for(lambda: _true(app[PUSH_CONNECTION].connected), what="the pusher")
        async with ClientSession(base_url=str(web_server.make_url(""))) as http:
            scim = Scim(http, token, engine)  # type: ignore[arg-type]
            alice = (await scim.user("alice@example.com"))["id"]
            bob = (await scim.user("bob@example.com"))["id"]
            g1 = (await scim.group("Engineering", [alice, bob]))["id"]
            g2 = (await scim.group("Oncall", [bob]))["id"]
            await _bind(sessions, acc, "writer", g1)
            await _bind(sessions, acc, "writer", g2)
            issued = await _issue(sessions, sealer, base, acc, [alice, bob], ["writer"])

            lost: dict[str, asyncio.Event] = {alice: asyncio.Event(), bob: asyncio.Event()}
            for user in (alice, bob):
                creds = tmp_path / f"{user}.creds"
                write_private(creds, issued[user].creds)

                async def gone(user: str = user) -> None:
                    lost[user].set()

                nc = await nats.connect(
                    server.url,
                    user_credentials=str(creds),
                    allow_reconnect=False,
                    disconnected_cb=gone,
                )
                clients.append(nc)
                await nc.publish("orders.new", b"1")
                await nc.flush()

            removal = patch(
                {"op": "Remove", "path": "members", "value": [{"value": alice}, {"value": bob}]}
            )
            reply = await scim.patch(f"/Groups/{g1}", removal)
            assert reply.status in (200, 204), reply.body
            async with asyncio.timeout(10):
                await lost[alice].wait()
            assert "revoked" in str(clients[0].last_error).lower(), clients[0].last_error
            # Bob still works: a round trip on his connection succeeds after Alice's drop.
            await clients[1].publish("orders.new", b"2")
            await clients[1].flush(timeout=2)
            assert clients[1].is_connected and not lost[bob].is_set()

            with pytest.raises(nats.errors.Error):
                await nats.connect(
                    server.url,
                    user_credentials=str(tmp_path / f"{alice}.creds"),
                    allow_reconnect=False,
                    connect_timeout=2,
                )
    finally:
        for nc in clients:
            if not nc.is_closed:
                await nc.close()
        server.stop()


async def _true(value: Any) -> Any:
    return value
