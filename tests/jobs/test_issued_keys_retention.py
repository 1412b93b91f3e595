"""The issued-keys retention job, on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from resolver.app import create_app
from resolver.config import Settings
from resolver.db.models import IssuedKeyClaim, IssuedUserKey, Revocation, User
from resolver.jobs.issued_keys_retention import DAY, prune_issued_keys, run
from resolver.jobs.prune import prune_revocations
from resolver.jobs.scheduler import JOBS
from resolver.natsjwt import new_keypair
from resolver.sealing import Sealer
from tests.accounts.conftest import sealer, sessions  # noqa: F401  (fixtures)
from tests.policy.deprovision_world import add_account, audits, issue, setup_operator_account

Sessions = async_sessionmaker[AsyncSession]


async def _keys(sessions: Sessions) -> set[str]:
    async with sessions() as session:
        return set(await session.scalars(select(IssuedUserKey.public_key)))


async def test_expired_keys_go_unless_a_revocation_rests_on_them(
    sessions: Sessions, sealer: Sealer, settings: Settings
) -> None:
    now = int(time.time())
    orders = await setup_operator_account(sessions, sealer, settings)
    billing = await add_account(sessions, sealer, settings, name="BILLING")
    async with sessions() as session, session.begin():
        alice = User(user_name="alice", user_name_key="alice")
        session.add(alice)
        await session.flush()

        async def issued(account: int, days_ago: float, ttl: int = 3_600) -> str:
            iat = now - int(days_ago * DAY)
            made = await issue(session, sealer, settings, account, alice.id, ["reader"], iat=iat)
            row = await session.scalar(
                select(IssuedUserKey).where(IssuedUserKey.public_key == made.public_key)
            )
            assert row is not None
            row.expires_at = iat + ttl
            return made.public_key

        old = await issued(orders, 40)
        old_too = await issued(orders, 31.5)
        recent = await issued(orders, 10)
        revoked = await issued(orders, 40)
        under_star = await issued(billing, 45)
        after_star = await issued(billing, 35)
        session.add_all(
            [
                Revocation(account_id=orders, public_key=revoked, revoked_at=now - 40 * DAY + 60),
                # "*" refuses every key of BILLING issued up to 40 days ago.
                Revocation(account_id=billing, public_key="*", revoked_at=now - 40 * DAY),
            ]
        )
        forever = new_keypair("user")[0]
        signer = await session.scalar(
            select(IssuedUserKey.signing_key).where(IssuedUserKey.public_key == old)
        )
        session.add(
            IssuedUserKey(
                public_key=forever,
                account_id=orders,
                user_id=alice.id,
                name="alice",
                signing_key=signer,
                jti="j" * 52,
                issued_at=now - 400 * DAY,
                expires_at=None,
            )
        )
        old_id = await session.scalar(
            select(IssuedUserKey.id).where(IssuedUserKey.public_key == old)
        )
        session.add(IssuedKeyClaim(issued_key_id=old_id, binding_id=1))
    everything = await _keys(sessions)

    assert await prune_issued_keys(sessions, 0, now=now) == 0  # 0 keeps them all
    assert await _keys(sessions) == everything
    assert await audits(sessions, "credentials.keys.prune") == []

    # Batches of one: the loop, not one statement, deletes them all.
    assert await prune_issued_keys(sessions, 30, now=now, batch_size=1) == 3
    assert await _keys(sessions) == everything - {old, old_too, after_star}
    assert {recent, revoked, under_star, forever} <= await _keys(sessions)
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(IssuedKeyClaim)) == 0
    [row] = await audits(sessions, "credentials.keys.prune")
    assert row.actor == "system"
    assert row.details == {"deleted": 3, "expired_before": now - 30 * DAY, "retention_days": 30}

    # Nothing more to do: no second audit row.
    assert await prune_issued_keys(sessions, 30, now=now) == 0
    assert len(await audits(sessions, "credentials.keys.prune")) == 1

    # Once the prune job has dropped the entries (every JWT they match expired), the keys
    # they rested on go at the next run.
    await prune_revocations(sessions, sealer, settings, now=now)
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Revocation)) == 0
    assert await prune_issued_keys(sessions, 30, now=now) == 2
    assert await _keys(sessions) == {recent, forever}


async def test_the_job_is_registered_and_reads_its_settings(
    sessions: Sessions, sealer: Sealer, settings: Settings, aiohttp_client: Callable[..., Any]
) -> None:
    """``run`` as the scheduler calls it, in a started app: the days come from
    ``[credentials] issued_keys_retention_days``."""
    orders = await setup_operator_account(sessions, sealer, settings)
    async with sessions() as session, session.begin():
        alice = User(user_name="alice", user_name_key="alice")
        session.add(alice)
        await session.flush()
        iat = int(time.time()) - 40 * DAY
        await issue(session, sealer, settings, orders, alice.id, ["reader"], iat=iat)

    def started(days: int) -> Any:
        credentials = replace(settings.credentials, issued_keys_retention_days=days)
        return aiohttp_client(create_app(replace(settings, credentials=credentials)))

    for days, said in [
        (0, "retention off (issued_keys_retention_days = 0): nothing deleted"),
        (60, "deleted 0 issued key(s) expired over 60 day(s) ago"),
        (30, "deleted 1 issued key(s) expired over 30 day(s) ago"),
    ]:
        client = await started(days)
        assert "issued_keys_retention" in {spec.name for spec in client.app[JOBS]}
        assert await run(client.app) == said
    assert await _keys(sessions) == set()
