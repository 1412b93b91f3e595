"""The pusher against a real nats-server (full nats resolver, system account preloaded)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from resolver.accounts.service import create_account, get_account, resign_account
from resolver.app import create_app
from resolver.appkeys import PUSHER
from resolver.config import Settings
from resolver.db.models import Account
from resolver.push.connection import SystemConnection
from resolver.push.pusher import Pusher
from resolver.push.state import PUSH_CONNECTION
from resolver.sealing import Sealer
from tests.accounts.conftest import ADMIN, bearer
from tests.push.conftest import outbox, push_settings, wait_for
from tests.support.nats import NatsServer, lookup_account_jwt

UPDATE_MESSAGES = {"jwt updated", "jwt update skipped"}


async def _resign(
    sessions: async_sessionmaker[AsyncSession], sealer: Sealer, settings: Settings, ref: str
) -> str:
    async with sessions() as session, session.begin():
        account = await get_account(session, ref)
        assert await resign_account(session, sealer, settings, account, force=True)
        return account.jwt or ""


async def _new_account(
    sessions: async_sessionmaker[AsyncSession], sealer: Sealer, settings: Settings, name: str
) -> Account:
    async with sessions() as session, session.begin():
        return await create_account(session, sealer, settings, name=name, actor=ADMIN)


async def test_push_of_the_system_account_records_every_reply(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    sealer: Sealer,
    system_account: Account,
    sys_creds: Path,
    full_nats: NatsServer,
    tokens: dict[str, str],
    aiohttp_client: Callable[..., Any],
) -> None:
    full_nats.start()
    app = create_app(push_settings(settings, full_nats.url, sys_creds))
    client = await aiohttp_client(app)
    await wait_for(lambda: _true(app[PUSH_CONNECTION].connected), what="NATS connection")

    def pushed() -> tuple[float, float]:
        done = REGISTRY.get_sample_value("nir_pushes_total", {"outcome": "done"}) or 0
        replies = sum(
            REGISTRY.get_sample_value(
                "nir_push_server_replies_total", {"server": "n1", "result": r}
            )
            or 0
            for r in ("updated", "skipped")
        )
        return done, replies

    pushed_before = pushed()
    jwt = await _resign(sessions, sealer, settings, system_account.public_key)
    app[PUSHER].wake()

    async def done() -> Any:
        rows = await outbox(sessions, system_account.public_key)
        return rows[-1] if rows and rows[-1].status == "done" else None

    row = await wait_for(done, what="the push to be recorded")
    assert row.attempts == 1 and row.done_at is not None and row.last_error is None
    # The full resolver answers on both subjects; each reply names the server.
    subjects = {r["subject"] for r in row.results}
    assert subjects == {
        f"$SYS.REQ.ACCOUNT.{system_account.public_key}.CLAIMS.UPDATE",
        "$SYS.REQ.CLAIMS.UPDATE",
    }
    for reply in row.results:
        assert reply["server"] == "n1" and reply["id"].startswith("N")
        assert reply["code"] == 200 and reply["message"] in UPDATE_MESSAGES, reply
        assert reply["result"] in {"updated", "skipped"}
    assert await lookup_account_jwt(full_nats.url, sys_creds, system_account.public_key) == jwt
    # Counted as it was recorded: a push done, and each of the server's two replies.
    done, replies = pushed()
    assert done >= pushed_before[0] + 1 and replies >= pushed_before[1] + 2

    response = await client.get("/admin/v1/push", headers=bearer(tokens["admin:read"]))
    assert response.status == 200
    body = await response.json()
    assert body["pending"] == [] and body["pending_count"] == 0
    assert body["nats"]["connected"] is True
    [server] = body["servers"]
    assert server["server"] == "n1" and server["jti"] == row.jti
    assert server["subject"].startswith("$SYS.REQ.ACCOUNT.")
    assert (await client.get("/admin/v1/push")).status == 401
    assert (await client.get("/admin/v1/push", headers=bearer(tokens["scim"]))).status == 403


async def _true(value: bool) -> bool:
    return value


async def test_three_quick_updates_push_only_the_newest(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    sealer: Sealer,
    sys_creds: Path,
    full_nats: NatsServer,
    engine: Any,
) -> None:
    full_nats.start()
    nats_settings = push_settings(settings, full_nats.url, sys_creds).nats
    connection = SystemConnection(nats_settings, sys_creds)
    pusher = Pusher(
        sessions,
        connection,
        timeout=0.3,
        row_locks=engine.dialect.name == "postgresql",
    )
    connection.start()
    try:
        await wait_for(lambda: _true(connection.connected), what="NATS connection")
        account = await _new_account(sessions, sealer, settings, "orders")
        assert await pusher.run_once() == 1
        jwts = [await _resign(sessions, sealer, settings, "orders") for _ in range(3)]
        assert len(set(jwts)) == 3

        assert await pusher.run_once() == 1
        assert await pusher.run_once() == 0
        rows = await outbox(sessions, account.public_key)
        assert [r.status for r in rows] == ["done", "superseded", "superseded", "done"]
        assert rows[-1].jwt == jwts[-1]
        assert [r.attempts for r in rows] == [1, 0, 0, 1]
        held = await lookup_account_jwt(full_nats.url, sys_creds, account.public_key)
        assert held == jwts[-1]
    finally:
        await connection.close()


async def test_nats_down_keeps_rows_pending_with_back_off_then_pushes(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    sealer: Sealer,
    sys_creds: Path,
    full_nats: NatsServer,
    tokens: dict[str, str],
    aiohttp_client: Callable[..., Any],
) -> None:
    app = create_app(push_settings(settings, full_nats.url, sys_creds))
    client = await aiohttp_client(app)  # starts although NATS is down
    assert not app[PUSH_CONNECTION].connected
    account = await _new_account(sessions, sealer, settings, "billing")
    app[PUSHER].wake()

    async def retried() -> Any:
        [row] = await outbox(sessions, account.public_key)
        return row if row.attempts >= 2 else None

    row = await wait_for(retried, what="two failed attempts")
    assert row.status == "pending" and row.done_at is None
    assert row.last_error == "not connected to NATS"
    # Back-off: the next attempt is scheduled after the last one, not immediately.
    assert row.next_attempt_at > row.created_at + timedelta(seconds=0.5)

    response = await client.get("/admin/v1/push", headers=bearer(tokens["admin:read"]))
    body = await response.json()
    assert body["nats"]["connected"] is False
    [pending] = body["pending"]
    assert pending["account"] == account.public_key and pending["attempts"] >= 2
    assert pending["last_error"] == "not connected to NATS"

    full_nats.start()

    async def pushed() -> Any:
        [row] = await outbox(sessions, account.public_key)
        return row if row.status == "done" else None

    row = await wait_for(pushed, what="the push after NATS came back")
    assert row.last_error is None and row.results
    held = await lookup_account_jwt(full_nats.url, sys_creds, account.public_key)
    assert held == row.jwt


async def test_a_new_app_instance_pushes_rows_left_pending(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    sealer: Sealer,
    sys_creds: Path,
    full_nats: NatsServer,
    aiohttp_client: Callable[..., Any],
) -> None:
    first = await aiohttp_client(create_app(push_settings(settings, full_nats.url, sys_creds)))
    account = await _new_account(sessions, sealer, settings, "reports")
    jwt = await _resign(sessions, sealer, settings, "reports")
    first.app[PUSHER].wake()
    await first.close()  # the process "stops" with both rows still pending
    rows = await outbox(sessions, account.public_key)
    # The first instance may have tried (and superseded the older row): nothing was pushed.
    assert rows[-1].status == "pending" and "done" not in {r.status for r in rows}

    full_nats.start()
    second = create_app(push_settings(settings, full_nats.url, sys_creds))
    await aiohttp_client(second)

    async def pushed() -> Any:
        rows = await outbox(sessions, account.public_key)
        return rows if rows[-1].status == "done" else None

    rows = await wait_for(pushed, what="the restarted pusher")
    assert [r.status for r in rows] == ["superseded", "done"]
    assert await lookup_account_jwt(full_nats.url, sys_creds, account.public_key) == jwt
