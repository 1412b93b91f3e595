"""The audit retention job: delete audit rows older than ``[audit] retention_days``.

In batches, each in a transaction of its own: deleting a year of connection events in one
statement would hold SQLite's one write lock (and, on PostgreSQL, a transaction's worth of
WAL and row locks) for as long as it takes, stalling every credentials request meanwhile.
Deleting by id below a cutoff is idempotent, so replicas running it at once do no harm.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

from aiohttp import web
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from resolver.appkeys import SESSIONMAKER, SETTINGS
from resolver.audit.service import SYSTEM, record
from resolver.db.models import AuditEntry, utcnow
from resolver.jobs.scheduler import add_job

log = logging.getLogger(__name__)

#: Rows deleted per transaction: a few milliseconds of write lock each.
BATCH_SIZE = 5_000


async def prune_audit_log(
    sessions: async_sessionmaker[AsyncSession],
    retention_days: int,
    *,
    now: datetime | None = None,
    batch_size: int = BATCH_SIZE,
) -> int:
    """Delete the rows older than ``retention_days`` (0 keeps everything); how many went.

    When any went, one row ``audit.prune`` (actor ``system``) says how many and up to when,
    so the log itself shows that, and why, older history is missing.
    """
    if retention_days <= 0:
        return 0
    cutoff = (now or utcnow()) - timedelta(days=retention_days)
    deleted = 0
    while True:
        async with sessions() as session, session.begin():
            # By id, through the ``at`` index: the same statement on SQLite and PostgreSQL
            # (neither takes DELETE ... LIMIT portably).
            batch = (
                select(AuditEntry.id)
                .where(AuditEntry.at < cutoff)
                .order_by(AuditEntry.id)
                .limit(batch_size)
                .scalar_subquery()
            )
            result = await session.execute(
                delete(AuditEntry)
                .where(AuditEntry.id.in_(batch))
                .execution_options(synchronize_session=False)
            )
            gone = max(0, result.rowcount or 0)
        deleted += gone
        if gone < batch_size:
            break
        await asyncio.sleep(0)  # let requests waiting for the database in between
    if deleted:
        async with sessions() as session, session.begin():
            record(
                session,
                SYSTEM,
                "audit.prune",
                details={
                    "deleted": deleted,
                    "before": cutoff.isoformat(),
                    "retention_days": retention_days,
                },
            )
        log.info(
            "deleted %d audit row(s) older than %d day(s) (before %s)",
            deleted,
            retention_days,
            cutoff.isoformat(timespec="seconds"),
        )
    return deleted


async def run(app: web.Application) -> str:
    days = app[SETTINGS].audit.retention_days
    if days <= 0:
        return "retention off (retention_days = 0): nothing deleted"
    deleted = await prune_audit_log(app[SESSIONMAKER], days)
    return f"deleted {deleted} audit row(s) older than {days} day(s)"


def setup(app: web.Application) -> None:
    # Registered with retention_days = 0 too (each run then returns at once): the job
    # list shows every job, and its last run says the log is kept whole.
    add_job(
        app,
        "audit_retention",
        run,
        every_seconds=app[SETTINGS].audit.retention_check_seconds,
        # Staggered with the other hourly jobs (see resolver.jobs.reconcile).
        first_run_after=min(app[SETTINGS].audit.retention_check_seconds, 90.0),
    )
