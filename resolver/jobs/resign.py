"""Job: re-sign account JWTs before they expire, so a server that missed a push heals itself.

nats-server keeps a loaded account until its JWT's ``exp``, then fetches it again over
HTTP. Renewing each JWT well before then (``service.resign_window``) means a server that
missed a push serves stale claims for at most one JWT lifetime, and never an expired one.
"""

from __future__ import annotations

import logging
import time

from aiohttp import web
from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from resolver.accounts.service import is_due_for_resign, resign_account, resign_window
from resolver.appkeys import SEALER, SESSIONMAKER, SETTINGS
from resolver.audit.service import SYSTEM, record
from resolver.config import Settings
from resolver.db.models import Account
from resolver.http.pushing import wake_pusher
from resolver.jobs.scheduler import add_job
from resolver.sealing import Sealer

log = logging.getLogger(__name__)


async def resign_expiring_accounts(
    sessions: async_sessionmaker[AsyncSession],
    sealer: Sealer,
    settings: Settings,
    *,
    now: int | None = None,
) -> list[str]:
    """Re-sign every account held here whose JWT expires within the window; their keys.

    One transaction per account: a failure on one account does not hold back the others.
    """
    when = int(time.time()) if now is None else now
    ttl = settings.accounts.jwt_ttl_seconds
    async with sessions() as session:
        due = list(
            await session.scalars(
                select(Account.public_key)
                .where(
                    Account.seed_sealed.is_not(None),
                    Account.deleted_at.is_(None),
                    or_(
                        Account.expires_at.is_(None),
                        Account.expires_at <= when + resign_window(ttl),
                    ),
                )
                .order_by(Account.expires_at)
            )
        )
    resigned: list[str] = []
    for key in due:
        async with sessions() as session, session.begin():
            account = await session.scalar(
                # Replicas all run this job; a row another one is re-signing is skipped, and
                # one it has just re-signed is no longer due (checked again below).
                select(Account)
                .where(Account.public_key == key, Account.deleted_at.is_(None))
                .with_for_update(skip_locked=True)
            )
            if account is None or not is_due_for_resign(account, ttl_seconds=ttl, now=when):
                continue
            old_exp = account.expires_at
            if await resign_account(session, sealer, settings, account, now=when):
                record(
                    session,
                    SYSTEM,
                    "account.resign",
                    target=key,
                    details={"reason": "expiry", "old_exp": old_exp, "exp": account.expires_at},
                    account=key,
                )
                resigned.append(key)
    if resigned:
        log.info("re-signed %d account JWT(s) before expiry", len(resigned))
    return resigned


async def run(app: web.Application) -> str:
    resigned = await resign_expiring_accounts(app[SESSIONMAKER], app[SEALER], app[SETTINGS])
    if resigned:
        wake_pusher(app)
    return f"re-signed {len(resigned)} account(s)"


def setup(app: web.Application) -> None:
    add_job(
        app,
        "resign_expiring_accounts",
        run,
        every_seconds=app[SETTINGS].accounts.resign_check_seconds,
    )
