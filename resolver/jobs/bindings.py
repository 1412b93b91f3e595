"""Job: a binding whose end time passed is treated like a removal from its group.

Access checks already ignore an ended binding (``policy.access``), so nobody gets new
credentials from it; this job revokes the credentials its members still hold in the
account (unless they reach it another way), re-signs the account once and pushes it.
"""

from __future__ import annotations

import logging
from datetime import datetime

from aiohttp import web
from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from resolver.appkeys import SEALER, SESSIONMAKER, SETTINGS
from resolver.audit.service import SYSTEM, record
from resolver.config import Settings
from resolver.db.models import Account, Binding, utcnow
from resolver.http.pushing import wake_pusher
from resolver.jobs.scheduler import add_job
from resolver.policy.deprovision import revoke_binding_members
from resolver.sealing import Sealer

log = logging.getLogger(__name__)


def _lapsed(now: datetime) -> tuple[ColumnElement[bool], ...]:
    # lapsed_at older than ends_at: the binding was extended after an earlier lapse.
    return (
        Binding.ends_at.is_not(None),
        Binding.ends_at <= now,
        or_(Binding.lapsed_at.is_(None), Binding.lapsed_at < Binding.ends_at),
    )


async def lapse_ended_bindings(
    sessions: async_sessionmaker[AsyncSession],
    sealer: Sealer,
    settings: Settings,
    *,
    now: datetime | None = None,
) -> list[int]:
    """Handle every binding whose ``ends_at`` passed; the ids handled.

    One transaction per binding, so one failing account does not hold back the others;
    a binding is marked only in the transaction that revoked what it granted.
    """
    when = now or utcnow()
    async with sessions() as session:
        due = list(
            await session.scalars(
                select(Binding.id).where(*_lapsed(when)).order_by(Binding.ends_at, Binding.id)
            )
        )
    handled: list[int] = []
    for binding_id in due:
        async with sessions() as session, session.begin():
            binding = await session.scalar(
                # Replicas all run this job: a binding another one is handling is skipped.
                select(Binding)
                .where(Binding.id == binding_id, *_lapsed(when))
                .with_for_update(skip_locked=True)
            )
            if binding is None:
                continue
            resigned, members = await revoke_binding_members(
                session,
                sealer,
                settings,
                binding.id,
                actor=SYSTEM,
                reason=f"binding {binding.id} ended",
                now=int(when.timestamp()),
            )
            binding.lapsed_at = when
            record(
                session,
                SYSTEM,
                "binding.lapse",
                target=str(binding.id),
                details={
                    "ends_at": binding.ends_at.isoformat() if binding.ends_at else None,
                    "members": members,
                    "accounts_resigned": sorted(resigned),
                },
                account=await session.scalar(
                    select(Account.public_key).where(Account.id == binding.account_id)
                ),
            )
            handled.append(binding_id)
    if handled:
        log.info("handled %d ended binding(s)", len(handled))
    return handled


async def run(app: web.Application) -> str:
    handled = await lapse_ended_bindings(app[SESSIONMAKER], app[SEALER], app[SETTINGS])
    if handled:
        wake_pusher(app)
    return f"handled {len(handled)} ended binding(s)"


def setup(app: web.Application) -> None:
    add_job(
        app,
        "lapse_ended_bindings",
        run,
        every_seconds=app[SETTINGS].accounts.binding_check_seconds,
    )
