"""The audit retention job, on SQLite and PostgreSQL."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from resolver.app import create_app
from resolver.config import AuditSettings, Settings
from resolver.db.engine import create_sessionmaker
from resolver.db.models import AuditEntry, utcnow
from resolver.jobs.audit_retention import prune_audit_log, run
from resolver.jobs.scheduler import JOBS

Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture
def sessions(engine: AsyncEngine) -> Sessions:
    return create_sessionmaker(engine)


async def _add(sessions: Sessions, ages_in_days: list[float], now: datetime) -> None:
    async with sessions() as session, session.begin():
        await session.execute(
            insert(AuditEntry),
            [
                {
                    "at": now - timedelta(days=age),
                    "actor": "t",
                    "action": "test.row",
                    "target": str(age),
                    "details": {"age": age},
                }
                for age in ages_in_days
            ],
        )


async def _ages(sessions: Sessions) -> list[float]:
    async with sessions() as session:
        rows = await session.scalars(
            select(AuditEntry).where(AuditEntry.action == "test.row").order_by(AuditEntry.id)
        )
        return [row.details["age"] for row in rows]


async def _prune_rows(sessions: Sessions) -> list[AuditEntry]:
    async with sessions() as session:
        query = select(AuditEntry).where(AuditEntry.action == "audit.prune")
        return list(await session.scalars(query.order_by(AuditEntry.id)))


async def test_old_rows_go_in_batches_and_the_pruning_is_audited(
    sessions: Sessions, caplog: pytest.LogCaptureFixture
) -> None:
    now = utcnow()
    old = [400.0 + i for i in range(11)]
    # Exactly at the cutoff stays (older than 30 days goes); a second less old stays too.
    await _add(sessions, [*old, 30.0, 29.99, 1.0, 0.0], now)
    caplog.set_level(logging.INFO, logger="resolver.jobs.audit_retention")

    # 11 old rows in batches of 4: three transactions (4, 4, 3).
    assert await prune_audit_log(sessions, 30, now=now, batch_size=4) == 11
    assert await _ages(sessions) == [30.0, 29.99, 1.0, 0.0]
    [pruned] = await _prune_rows(sessions)
    assert (pruned.actor, pruned.target, pruned.user_name, pruned.account_key) == (
        "system",
        None,
        None,
        None,
    )
    assert pruned.details["deleted"] == 11 and pruned.details["retention_days"] == 30
    assert pruned.details["before"] == (now - timedelta(days=30)).isoformat()
    assert "deleted 11 audit row(s) older than 30 day(s)" in caplog.text

    # Nothing left to delete: nothing deleted, nothing written.
    assert await prune_audit_log(sessions, 30, now=now, batch_size=4) == 0
    assert len(await _prune_rows(sessions)) == 1
    # A batch exactly full is followed by one that finds nothing.
    later = now + timedelta(days=2)
    assert await prune_audit_log(sessions, 30, now=later, batch_size=2) == 2
    assert await _ages(sessions) == [1.0, 0.0]


async def test_zero_keeps_everything(sessions: Sessions) -> None:
    now = utcnow()
    await _add(sessions, [10_000.0, 1.0], now)
    assert await prune_audit_log(sessions, 0, now=now) == 0
    assert await _ages(sessions) == [10_000.0, 1.0]
    assert await _prune_rows(sessions) == []


async def test_the_job_is_registered_at_its_interval(settings: Settings) -> None:
    for days in (90, 0):
        app = create_app(
            replace(settings, audit=AuditSettings(retention_days=days, retention_check_seconds=123))
        )
        [job] = [spec for spec in app[JOBS] if spec.name == "audit_retention"]
        assert job.every_seconds == 123


async def test_the_job_reads_its_settings(
    settings: Settings, sessions: Sessions, aiohttp_client: Callable[..., Any]
) -> None:
    """``run`` as the scheduler calls it, in a started app: the days come from
    ``[audit] retention_days``."""
    now = utcnow()
    await _add(sessions, [8.0, 6.0], now)
    app = create_app(replace(settings, audit=AuditSettings(retention_days=7)))
    await aiohttp_client(app)
    assert await run(app) == "deleted 1 audit row(s) older than 7 day(s)"
    assert await _ages(sessions) == [6.0]
    [pruned] = await _prune_rows(sessions)
    assert pruned.details["deleted"] == 1 and pruned.details["retention_days"] == 7
