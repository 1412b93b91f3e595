"""Job: drop revocation entries no live user JWT can match any more, and re-sign.

Keeps each account's revocation list (and so its JWT, which every nats-server holds and
checks on every connect) as short as the credentials still in circulation allow.
"""

from __future__ import annotations

import logging
import time

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from resolver.accounts.service import resign_account
from resolver.appkeys import SEALER, SESSIONMAKER, SETTINGS
from resolver.audit.service import SYSTEM, record
from resolver.config import Settings
from resolver.db.models import Account
from resolver.http.pushing import wake_pusher
from resolver.jobs.scheduler import add_job
from resolver.policy.revocations import accounts_with_prunable, prune_account
from resolver.sealing import Sealer

log = logging.getLogger(__name__)

#: Audit rows list at most this many dropped keys (the count is always complete).
AUDIT_KEYS = 200


async def prune_revocations(
    sessions: async_sessionmaker[AsyncSession],
    sealer: Sealer,
    settings: Settings,
    *,
    now: int | None = None,
) -> dict[str, int]:
    """Prune every account that has dead entries; account key → entries dropped.

    One transaction per account, each re-signed once (which queues its push).
    """
    when = int(time.time()) if now is None else now
    async with sessions() as session:
        due = await accounts_with_prunable(session, when)
    pruned: dict[str, int] = {}
    for account_id in due:
        async with sessions() as session, session.begin():
            account = await session.scalar(
                # Replicas all run this job: an account another one holds is skipped.
                select(Account)
                .where(Account.id == account_id, Account.deleted_at.is_(None))
                .with_for_update(skip_locked=True)
            )
            if account is None:
                continue
            keys = await prune_account(session, account.id, when)
            if not keys:
                continue
            await resign_account(session, sealer, settings, account, force=True, now=when)
            record(
                session,
                SYSTEM,
                "account.revocations.prune",
                target=account.public_key,
                details={
                    "account": account.name,
                    "count": len(keys),
                    "user_keys": keys[:AUDIT_KEYS],
                    "jti": account.jti,
                },
                account=account.public_key,
            )
            pruned[account.public_key] = len(keys)
    if pruned:
        log.info(
            "pruned %d revocation entr(ies) in %d account(s)", sum(pruned.values()), len(pruned)
        )
    return pruned


async def run(app: web.Application) -> str:
    pruned = await prune_revocations(app[SESSIONMAKER], app[SEALER], app[SETTINGS])
    if pruned:
        wake_pusher(app)
    return f"pruned {sum(pruned.values())} revocation(s) in {len(pruned)} account(s)"


def setup(app: web.Application) -> None:
    add_job(
        app,
        "prune_revocations",
        run,
        every_seconds=app[SETTINGS].accounts.prune_check_seconds,
    )
