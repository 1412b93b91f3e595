"""The job that renews account JWTs before they expire, and the scheduler that runs it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from resolver.accounts import service
from resolver.accounts.signing import store_account_jwt
from resolver.app import create_app
from resolver.config import Settings
from resolver.db.models import Account, AuditEntry, Operator
from resolver.jobs.resign import resign_expiring_accounts
from resolver.jobs.scheduler import JOBS, add_job
from resolver.natsjwt import decode, new_keypair
from resolver.sealing import Sealer
from tests.accounts.conftest import ADMIN, nsc_account_jwt, outbox_rows

Sessions = async_sessionmaker[AsyncSession]


async def test_job_renews_only_accounts_near_expiry(
    sessions: Sessions,
    sealer: Sealer,
    settings: Settings,
    operator: Operator,
    operator_signing_seed: bytes,
) -> None:
    async with sessions() as session, session.begin():
        fresh = await service.create_account(session, sealer, settings, name="fresh", actor=ADMIN)
        aging = await service.create_account(
            session, sealer, settings, name="aging", actor=ADMIN, now=fresh.issued_at - 20 * 3_600
        )
        # Managed elsewhere and about to expire: not ours to re-sign.
        external_key = new_keypair("account")[0]
        external = Account(
            operator_id=operator.id, name="ext", public_key=external_key, seed_sealed=None, spec={}
        )
        store_account_jwt(
            external,
            nsc_account_jwt(
                operator_signing_seed,
                external_key,
                iat=fresh.issued_at - 100,
                exp=fresh.issued_at + 60,
            ),
        )
        session.add(external)
    system_key = operator.system_account_key

    now = fresh.issued_at + 60
    resigned = await resign_expiring_accounts(sessions, sealer, settings, now=now)
    # "aging" expires in 4 h, inside the 6 h window; "fresh" and SYS in ~24 h.
    assert resigned == [aging.public_key]
    async with sessions() as session:
        renewed = await session.get_one(Account, aging.id)
        audit = await session.scalar(
            select(AuditEntry).where(AuditEntry.action == "account.resign")
        )
    assert renewed.expires_at == now + settings.accounts.jwt_ttl_seconds
    assert renewed.jti != aging.jti and decode(renewed.jwt).exp == renewed.expires_at
    assert [r.jti for r in await outbox_rows(sessions, aging.public_key)] == [
        aging.jti,
        renewed.jti,
    ]
    assert audit is not None and audit.actor == "system" and audit.target == aging.public_key
    assert await outbox_rows(sessions, external_key) == []
    assert len(await outbox_rows(sessions, fresh.public_key)) == 1

    # Run again at the same moment: nothing is due any more.
    assert await resign_expiring_accounts(sessions, sealer, settings, now=now) == []

    # A clock near everyone's expiry: every account held here is renewed, SYS included.
    later = fresh.expires_at - 60
    again = await resign_expiring_accounts(sessions, sealer, settings, now=later)
    assert set(again) == {fresh.public_key, aging.public_key, system_key}
    async with sessions() as session:
        still_external = await session.scalar(
            select(Account.expires_at).where(Account.public_key == external_key)
        )
    assert still_external == fresh.issued_at + 60


async def test_scheduler_runs_registered_jobs(
    settings: Settings, operator: Operator, aiohttp_client: Callable[..., Any]
) -> None:
    app = create_app(settings)
    assert "resign_expiring_accounts" in [spec.name for spec in app[JOBS]]
    ran = asyncio.Event()
    failures = []

    async def boom(app: web.Application) -> None:
        failures.append(1)
        raise RuntimeError("a failing job must not stop the scheduler")

    async def probe(app: web.Application) -> None:
        ran.set()

    add_job(app, "boom", boom, every_seconds=0.05, first_run_after=0)
    add_job(app, "probe", probe, every_seconds=0.05, first_run_after=0.1)
    await aiohttp_client(app)
    await asyncio.wait_for(ran.wait(), timeout=5)
    assert failures
