"""Two replicas' recorders on one real nats-server: each connection is recorded once.

Both subscribe in the same queue group, so nats-server hands each event to one of them;
without the group every event would be written twice. In process, on the full nats
resolver with the system account preloaded (the push tests' server), real SQLite and
PostgreSQL.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from resolver.accounts.operator import issue_system_user_creds
from resolver.audit.connection_recorder import ConnectionRecorder
from resolver.bootstrap import write_private
from resolver.config import NatsSettings
from resolver.db.models import AuditEntry
from resolver.sealing import Sealer
from tests.push import conftest as push_fixtures
from tests.support.nats import NatsServer

operator = push_fixtures.operator
sealer = push_fixtures.sealer
sessions = push_fixtures.sessions
system_account = push_fixtures.system_account
sys_creds = push_fixtures.sys_creds
full_nats = push_fixtures.full_nats
wait_for = push_fixtures.wait_for

Sessions = async_sessionmaker[AsyncSession]


async def rows_named(sessions: Sessions, name: str) -> list[AuditEntry]:
    async with sessions() as session:
        rows = await session.scalars(
            # By event time: a connect and its disconnect may go to different replicas, and
            # the one holding the disconnect may write first (ids are in order of writing).
            select(AuditEntry)
            .where(AuditEntry.action.like("nats.%"))
            .order_by(AuditEntry.at, AuditEntry.id)
        )
        return [r for r in rows if r.details.get("client", {}).get("name") == name]


async def test_with_two_replicas_each_connection_is_recorded_once(
    full_nats: NatsServer, sys_creds: Path, sessions: Sessions, sealer: Sealer, tmp_path: Path
) -> None:
    full_nats.start()
    settings = NatsSettings(servers=(full_nats.url,), system_creds=sys_creds)
    replicas = [ConnectionRecorder(sessions, settings, sys_creds) for _ in range(2)]
    for recorder in replicas:
        recorder.start()
    try:
        for recorder in replicas:
            await asyncio.wait_for(recorder.subscribed.wait(), 10)
        # A client of its own: another system user the service issued.
        async with sessions() as session, session.begin():
            client_creds = tmp_path / "client.creds"
            write_private(client_creds, await issue_system_user_creds(session, sealer))
        for index in range(6):
            nc = await nats.connect(
                full_nats.url, user_credentials=str(client_creds), name=f"twice-{index}"
            )
            await nc.close()

        async def all_recorded() -> bool:
            for index in range(6):
                if len(await rows_named(sessions, f"twice-{index}")) < 2:
                    return False
            return True

        await wait_for(all_recorded, what="the six connections' rows")
        await asyncio.sleep(0.5)  # time for a duplicate to be written, were there one
        for index in range(6):
            rows = await rows_named(sessions, f"twice-{index}")
            assert [r.action for r in rows] == ["nats.connect", "nats.disconnect"]
            assert {r.actor for r in rows} == {"sys"}
    finally:
        for recorder in replicas:
            await recorder.stop()
