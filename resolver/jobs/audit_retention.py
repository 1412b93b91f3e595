"""The audit retention job: delete audit rows older than ``[audit] retention_days``.

In batches, each in a transaction of its own (``delete_in_batches`` says why).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from resolver.appkeys import SESSIONMAKER, SETTINGS
from resolver.audit.service import SYSTEM, record
from resolver.db.batched_delete import delete_in_batches
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
    # Through the ``at`` index.
    deleted = await delete_in_batches(
        sessions, AuditEntry, AuditEntry.at < cutoff, batch_size=batch_size
    )
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
