"""The issued-keys retention job: forget user JWTs that expired long ago.

Every credentials request records the user key it signed (``IssuedUserKey``): what a
revocation must cover, who a connection belongs to, when a rotated signing key stops
mattering. All of that is about JWTs that can still be used. At 200 exchanges a second the
table would otherwise grow by 17 million rows a day, and with it every index the hot path
writes.

A row goes once its JWT expired more than ``[credentials] issued_keys_retention_days`` ago
and no revocation entry still rests on it: the prune job (resolver.jobs.prune) drops an
entry once every JWT it matches has expired, and reads these rows to know that, so they
stay until it has. Rows without an expiry are kept. What was issued to whom stays in the
audit log (``credentials.issue``) for as long as that is kept.

One consequence, chosen: a key whose JWTs all expired that long ago is no longer "issued to
someone else" in its account (``refuse_public_key``), so another identity may present it.
The key's seed never left the first holder, and the audit log still names both.

In batches, each in a transaction of its own (``delete_in_batches`` says why).
"""

from __future__ import annotations

import logging
import time

from aiohttp import web
from sqlalchemy import and_, exists, or_
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from resolver.appkeys import SESSIONMAKER, SETTINGS
from resolver.audit.service import SYSTEM, record
from resolver.db.batched_delete import delete_in_batches
from resolver.db.models import IssuedUserKey, Revocation
from resolver.jobs.scheduler import add_job
from resolver.policy.revocations import WILDCARD

log = logging.getLogger(__name__)

#: Rows deleted per transaction: a few milliseconds of write lock each.
BATCH_SIZE = 5_000
#: Seconds between runs: expiry is measured in days, an hourly sweep keeps up.
EVERY_SECONDS = 3_600
DAY = 86_400


def _still_revoked() -> object:
    """SQL condition on ``IssuedUserKey``: a revocation entry of its account matches it."""
    return exists().where(
        Revocation.account_id == IssuedUserKey.account_id,
        or_(
            Revocation.public_key == IssuedUserKey.public_key,
            and_(
                Revocation.public_key == WILDCARD,
                IssuedUserKey.issued_at <= Revocation.revoked_at,
            ),
        ),
    )


async def prune_issued_keys(
    sessions: async_sessionmaker[AsyncSession],
    retention_days: int,
    *,
    now: int | None = None,
    batch_size: int = BATCH_SIZE,
) -> int:
    """Delete the issued keys that expired over ``retention_days`` ago (0 keeps them all)
    and that no revocation entry matches; how many went. One ``credentials.keys.prune``
    audit row says how many when any went."""
    if retention_days <= 0:
        return 0
    cutoff = (int(time.time()) if now is None else now) - retention_days * DAY
    # Their IssuedKeyClaim rows go with them (ON DELETE CASCADE).
    deleted = await delete_in_batches(
        sessions,
        IssuedUserKey,
        IssuedUserKey.expires_at.is_not(None),
        IssuedUserKey.expires_at < cutoff,
        ~_still_revoked(),
        batch_size=batch_size,
    )
    if deleted:
        async with sessions() as session, session.begin():
            record(
                session,
                SYSTEM,
                "credentials.keys.prune",
                details={
                    "deleted": deleted,
                    "expired_before": cutoff,
                    "retention_days": retention_days,
                },
            )
        log.info("forgot %d issued user key(s) expired over %d day(s) ago", deleted, retention_days)
    return deleted


async def run(app: web.Application) -> str:
    days = app[SETTINGS].credentials.issued_keys_retention_days
    if days <= 0:
        return "retention off (issued_keys_retention_days = 0): nothing deleted"
    deleted = await prune_issued_keys(app[SESSIONMAKER], days)
    return f"deleted {deleted} issued key(s) expired over {days} day(s) ago"


def setup(app: web.Application) -> None:
    # Registered with the retention off too, like audit_retention: the job list shows it.
    add_job(
        app,
        "issued_keys_retention",
        run,
        every_seconds=EVERY_SECONDS,
        # Staggered with the other hourly jobs (see resolver.jobs.reconcile).
        first_run_after=150.0,
    )
