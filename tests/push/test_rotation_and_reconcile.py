"""Key rotation and reconcile against a real nats-server (full nats resolver), through the
app's own pusher: live connections stay open or are dropped exactly as the rotation says."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import nats
import pytest
from aiohttp import web
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from resolver.accounts.operator import get_operator, system_account
from resolver.accounts.service import (
    create_account,
    get_account,
    issue_workload_creds,
    update_account,
)
from resolver.app import create_app
from resolver.appkeys import PUSHER
from resolver.config import Settings
from resolver.db.models import Operator, PushOutbox
from resolver.jobs.reconcile import reconcile_accounts
from resolver.jobs.rotate import rotate_accounts, rotate_operator
from resolver.natsjwt import decode
from resolver.push.probe import ServerProbe
from resolver.push.state import PUSH_CONNECTION
from resolver.sealing import Sealer
from tests.accounts.conftest import ADMIN
from tests.push.conftest import push_settings, wait_for
from tests.support.nats import NatsServer, full_resolver_config, lookup_account_jwt


class Client:
    """A NATS client that never reconnects, so a dropped connection stays dropped."""

    def __init__(self, nc: Any, errors: list[str]) -> None:
        self.nc = nc
        self.errors = errors

    async def round_trip(self, subject: str) -> bool:
        sub = await self.nc.subscribe(subject)
        try:
            await self.nc.publish(subject, b"ping")
            await self.nc.flush(timeout=2)
            msg = await sub.next_msg(timeout=2)
            return bool(msg.data == b"ping")
        finally:
            await sub.unsubscribe()

    @property
    def open(self) -> bool:
        return bool(self.nc.is_connected)


@pytest.fixture
async def clients(tmp_path: Path) -> AsyncIterator[Callable[[str, str], Any]]:
    made: list[Any] = []

    async def connect(url: str, creds: str) -> Client:
        path = tmp_path / f"user{len(made)}.creds"
        path.write_text(creds)
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc))

        nc = await nats.connect(
            url, user_credentials=str(path), allow_reconnect=False, error_cb=on_error
        )
        made.append(nc)
        return Client(nc, errors)

    yield connect
    for nc in made:
        if not nc.is_closed:
            await nc.close()


async def _start(
    settings: Settings, server: NatsServer, creds: Path, aiohttp_client: Callable[..., Any]
) -> web.Application:
    app = create_app(push_settings(settings, server.url, creds))
    await aiohttp_client(app)
    await wait_for(lambda: _value(app[PUSH_CONNECTION].connected), what="NATS connection")
    return app


async def _value(value: Any) -> Any:
    return value


async def _all_pushed(app: web.Application, sessions: async_sessionmaker[AsyncSession]) -> None:
    app[PUSHER].wake()

    async def settled() -> bool:
        async with sessions() as session:
            statuses = set(await session.scalars(select(PushOutbox.status)))
        return "pending" not in statuses

    await wait_for(settled, what="every queued push")


async def _account_jwt(sessions: async_sessionmaker[AsyncSession], name: str) -> str:
    async with sessions() as session:
        return (await get_account(session, name)).jwt or ""


async def _workload(
    sessions: async_sessionmaker[AsyncSession], sealer: Sealer, name: str
) -> tuple[str, str]:
    """(creds, signing key) of a new workload user of account ``name``."""
    async with sessions() as session, session.begin():
        account = await get_account(session, name)
        creds, issued = await issue_workload_creds(
            session, sealer, account, name="worker", ttl_seconds=600, actor=ADMIN
        )
        return creds, issued.signing_key


async def test_account_key_rotation_keeps_connections_and_revoke_old_drops_them(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    sealer: Sealer,
    sys_creds: Path,
    full_nats: NatsServer,
    clients: Callable[[str, str], Any],
    aiohttp_client: Callable[..., Any],
) -> None:
    full_nats.start()
    app = await _start(settings, full_nats, sys_creds, aiohttp_client)
    async with sessions() as session, session.begin():
        await create_account(session, sealer, settings, name="ORDERS", actor=ADMIN)
    await _all_pushed(app, sessions)
    old_creds, old_key = await _workload(sessions, sealer, "ORDERS")
    old = await clients(full_nats.url, old_creds)
    assert await old.round_trip("orders.before")

    report = await rotate_accounts(sessions, sealer, settings, actor=ADMIN, names=["ORDERS"])
    assert report.keys == 1
    await _all_pushed(app, sessions)
    jwt = await _account_jwt(sessions, "ORDERS")
    account_key = decode(jwt).subject
    assert await lookup_account_jwt(full_nats.url, sys_creds, account_key) == jwt
    await asyncio.sleep(0.3)  # a drop follows a push within milliseconds (DESIGN.md §2)
    assert old.open and await old.round_trip("orders.after-rotation")

    new_creds, new_key = await _workload(sessions, sealer, "ORDERS")
    assert new_key != old_key
    new = await clients(full_nats.url, new_creds)
    assert await new.round_trip("orders.new-key")

    # Compromised: the old keys go now, and with them every connection they signed.
    await rotate_accounts(
        sessions, sealer, settings, actor=ADMIN, names=["ORDERS"], revoke_old=True
    )
    await _all_pushed(app, sessions)
    await wait_for(lambda: _value(not old.open and not new.open), what="the old users dropped")
    newest_creds, newest_key = await _workload(sessions, sealer, "ORDERS")
    assert newest_key not in (old_key, new_key)
    newest = await clients(full_nats.url, newest_creds)
    assert await newest.round_trip("orders.newest")
    with pytest.raises(Exception):  # noqa: B017  (nats-py raises its auth error type)
        await clients(full_nats.url, old_creds)


async def test_operator_rotation_is_accepted_by_a_server_on_the_previous_operator_jwt(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    sealer: Sealer,
    sys_creds: Path,
    full_nats: NatsServer,
    clients: Callable[[str, str], Any],
    aiohttp_client: Callable[..., Any],
    tmp_path: Path,
) -> None:
    # full_nats is configured with the operator JWT from before any rotation.
    full_nats.start()
    app = await _start(settings, full_nats, sys_creds, aiohttp_client)
    async with sessions() as session, session.begin():
        await create_account(session, sealer, settings, name="ORDERS", actor=ADMIN)
    await _all_pushed(app, sessions)
    creds, _ = await _workload(sessions, sealer, "ORDERS")
    live = await clients(full_nats.url, creds)
    assert await live.round_trip("orders.before")

    probe = ServerProbe(app[PUSH_CONNECTION], timeout=0.5)
    report = await rotate_operator(sessions, sealer, settings, actor=ADMIN, probe=probe)
    assert report.status == "rotated", report.message
    assert report.accounts_resigned == 2  # SYS and ORDERS
    await _all_pushed(app, sessions)
    async with sessions() as session:
        rows = list(await session.scalars(select(PushOutbox).order_by(PushOutbox.id)))
        operator = await get_operator(session)
        sys_jwt = (await system_account(session, operator)).jwt or ""
    # The server accepted both re-signed accounts: no error reply, and it holds them.
    for row in rows[-2:]:
        assert row.status == "done" and row.last_error is None, row.last_error
        assert {r["code"] for r in row.results} == {200}
    jwt = await _account_jwt(sessions, "ORDERS")
    assert decode(jwt).issuer == report.active_key
    assert await lookup_account_jwt(full_nats.url, sys_creds, decode(jwt).subject) == jwt
    await asyncio.sleep(0.3)
    assert live.open and await live.round_trip("orders.after")
    fresh_creds, _ = await _workload(sessions, sealer, "ORDERS")
    fresh = await clients(full_nats.url, fresh_creds)
    assert await fresh.round_trip("orders.fresh")

    # The server still runs the old operator JWT: it does not trust the new next key.
    again = await rotate_operator(sessions, sealer, settings, actor=ADMIN, probe=probe)
    assert again.status == "refused" and "n1" in again.message

    # Deployed (restart with the new operator JWT): now the next rotation may go.
    async with sessions() as session:
        operator_jwt = (await session.scalar(select(Operator.jwt))) or ""
    full_nats.stop()
    full_nats.configure(
        full_resolver_config(
            operator_jwt=operator_jwt,
            system_account_key=decode(sys_jwt).subject,
            system_account_jwt=sys_jwt,
            jwt_dir=tmp_path / "nats" / "jwt",
            port=full_nats.port,
            name="n1",
        )
    )
    full_nats.start()

    async def answering() -> bool:
        try:
            return await probe.servers() == ["n1"]
        except Exception:  # not reconnected yet
            return False

    await wait_for(answering, what="the restarted server to answer")
    third = await rotate_operator(sessions, sealer, settings, actor=ADMIN, probe=probe)
    assert third.status == "rotated", third.message
    await _all_pushed(app, sessions)
    newest_creds, _ = await _workload(sessions, sealer, "ORDERS")
    assert await (await clients(full_nats.url, newest_creds)).round_trip("orders.third")


async def test_reconcile_reports_a_server_that_missed_a_push_and_heals_it(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    sealer: Sealer,
    sys_creds: Path,
    full_nats: NatsServer,
    clients: Callable[[str, str], Any],
    aiohttp_client: Callable[..., Any],
) -> None:
    full_nats.start()
    app = await _start(settings, full_nats, sys_creds, aiohttp_client)
    async with sessions() as session, session.begin():
        await create_account(session, sealer, settings, name="ORDERS", actor=ADMIN)
        await create_account(session, sealer, settings, name="BILLING", actor=ADMIN)
    await _all_pushed(app, sessions)
    # Loaded on the server (a user connected), so the server answers with what it holds.
    for name in ("ORDERS", "BILLING"):
        creds, _ = await _workload(sessions, sealer, name)
        await clients(full_nats.url, creds)
    probe = ServerProbe(app[PUSH_CONNECTION], timeout=0.5)

    clean = await reconcile_accounts(sessions, probe)
    assert clean.probed and clean.servers == ["n1"]
    assert clean.stale == {} and clean.requeued == 3  # SYS, ORDERS, BILLING
    await _all_pushed(app, sessions)

    # A change whose push this server missed (it was recorded done because other servers
    # answered): the server keeps the older JWT.
    before = await _account_jwt(sessions, "ORDERS")
    async with sessions() as session, session.begin():
        account = await get_account(session, "ORDERS")
        await update_account(session, sealer, settings, account, {"tags": ["missed"]}, actor=ADMIN)
        await session.execute(
            update(PushOutbox)
            .where(PushOutbox.status == "pending")
            .values(status="done", results=[])
        )
    current = await _account_jwt(sessions, "ORDERS")
    key = decode(current).subject
    assert await lookup_account_jwt(full_nats.url, sys_creds, key) == before != current

    lines: list[str] = []
    report = await reconcile_accounts(sessions, probe, progress=lines.append)
    assert report.stale == {key: ["n1"]}
    assert report.stale_by_server() == {"n1": 1}
    assert "1 account(s) stale" in report.summary()
    assert any("3/3" in line for line in lines)
    await _all_pushed(app, sessions)
    assert await lookup_account_jwt(full_nats.url, sys_creds, key) == current
    healed = await reconcile_accounts(sessions, probe)
    assert healed.stale == {}
