"""Signing key rotation, operator and accounts, on SQLite and PostgreSQL (no nats-server)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from resolver.accounts import rotation
from resolver.accounts.operator import get_operator, system_account
from resolver.accounts.service import get_account, issue_workload_creds
from resolver.accounts.signing import active_signing_key, next_signing_key, plain_signing_key
from resolver.app import create_app
from resolver.config import Settings
from resolver.db.models import AccountSigningKey, OperatorSigningKey, PushOutbox, User, utcnow
from resolver.errors import ConflictError
from resolver.jobs import rotate as rotate_job
from resolver.jobs.rotate import (
    finish_operator_rotation,
    retire_drained,
    rotate_accounts,
    rotate_operator,
)
from resolver.jobs.scheduler import JOBS
from resolver.natsjwt import decode
from resolver.policy.scoped_keys import scoped_key_for
from resolver.sealing import Sealer
from tests.accounts.conftest import ADMIN, sealer, sessions  # noqa: F401  (fixtures)
from tests.policy.deprovision_world import add_account, audits, issue, setup_operator_account


def claims_of(token: str | None) -> dict[str, Any]:
    return decode(token or "").claims


def listed_keys(token: str | None) -> list[str]:
    return [
        k["key"] if isinstance(k, dict) else k
        for k in claims_of(token)["nats"].get("signing_keys", [])
    ]


class Trusting:
    """A probe answering as servers whose operator JWT lists ``keys`` would."""

    def __init__(self, **servers: set[str]) -> None:
        self.servers = servers

    async def trusted_signing_keys(self) -> dict[str, set[str]]:
        return self.servers


async def _operator_state(sessions: async_sessionmaker[AsyncSession]) -> tuple[str, str, str]:
    async with sessions() as session:
        operator = await get_operator(session)
        active = await active_signing_key(session, operator)
        upcoming = await next_signing_key(session, operator)
        assert upcoming is not None
        return operator.jwt or "", active.public_key, upcoming.public_key


async def test_operator_rotation_promotes_the_published_key_and_resigns_every_account(
    sessions: async_sessionmaker[AsyncSession], sealer: Sealer, settings: Settings
) -> None:
    acc = await setup_operator_account(sessions, sealer, settings)
    await add_account(sessions, sealer, settings, name="BILLING")
    operator_jwt, active, upcoming = await _operator_state(sessions)
    # A new operator pre-publishes its next key from the start; accounts use the active one.
    assert claims_of(operator_jwt)["nats"]["signing_keys"] == [active, upcoming]
    assert claims_of(operator_jwt)["nats"]["strict_signing_key_usage"] is True
    async with sessions() as session:
        before_rows = len(list(await session.scalars(select(PushOutbox.id))))
        account = await get_account(session, "ORDERS")
        assert decode(account.jwt or "").issuer == active

    # A server that does not trust the next key (its operator JWT is older) blocks it.
    refused = await rotate_operator(
        sessions, sealer, settings, actor=ADMIN, probe=Trusting(n1={active})
    )  # type: ignore[arg-type]
    assert refused.status == "refused" and "n1" in refused.message
    # So does not being able to ask anyone, unless forced.
    nobody = await rotate_operator(sessions, sealer, settings, actor=ADMIN, probe=None)
    assert nobody.status == "refused" and "--force" in nobody.message
    assert (await _operator_state(sessions))[1] == active  # nothing changed

    dry = await rotate_operator(
        sessions,
        sealer,
        settings,
        actor=ADMIN,
        probe=Trusting(n1={active, upcoming}),  # type: ignore[arg-type]
        dry_run=True,
    )
    assert dry.status == "dry-run" and (await _operator_state(sessions))[1] == active

    lines: list[str] = []
    report = await rotate_operator(
        sessions,
        sealer,
        settings,
        actor=ADMIN,
        probe=Trusting(n1={active, upcoming}),  # type: ignore[arg-type]
        progress=lines.append,
    )
    assert report.status == "rotated", report.message
    assert report.active_key == upcoming and report.retired_key == active
    assert report.accounts_resigned == 3  # SYS, ORDERS, BILLING
    assert any("3/3" in line for line in lines)
    assert "before the next operator key rotation" in report.message

    operator_jwt, now_active, now_next = await _operator_state(sessions)
    assert now_active == upcoming and now_next not in (active, upcoming)
    # The old key is no longer listed (no account uses it); the new next key is.
    assert claims_of(operator_jwt)["nats"]["signing_keys"] == [upcoming, now_next]
    async with sessions() as session:
        operator = await get_operator(session)
        sys_account = await system_account(session, operator)
        for ref in ("ORDERS", "BILLING"):
            assert decode((await get_account(session, ref)).jwt or "").issuer == upcoming
        assert decode(sys_account.jwt or "").issuer == upcoming
        pushed = list(await session.scalars(select(PushOutbox.id)))
        assert len(pushed) == before_rows + 3
        retired = await session.scalar(
            select(OperatorSigningKey).where(OperatorSigningKey.public_key == active)
        )
        assert retired is not None and retired.retired_at is not None
    [audit] = await audits(sessions, "operator.signing_key.rotate")
    assert audit.details == {"active_key": upcoming, "next_key": now_next, "retired_key": active}
    assert "seed" not in str(audit.details).lower()
    assert acc


async def test_a_rotation_interrupted_after_the_promotion_is_finished_later(
    sessions: async_sessionmaker[AsyncSession], sealer: Sealer, settings: Settings
) -> None:
    await setup_operator_account(sessions, sealer, settings)
    _, active, upcoming = await _operator_state(sessions)
    async with sessions() as session, session.begin():
        await rotation.promote_next_operator_key(session, sealer, settings, actor=ADMIN)
    # Crashed here: accounts are still signed by the retired key, which stays listed.
    operator_jwt, now_active, now_next = await _operator_state(sessions)
    assert now_active == upcoming
    assert claims_of(operator_jwt)["nats"]["signing_keys"] == [active, upcoming, now_next]
    async with sessions() as session:
        assert len(await rotation.accounts_to_resign(session)) == 2
    assert await finish_operator_rotation(sessions, sealer, settings) == 2
    operator_jwt, _, _ = await _operator_state(sessions)
    assert claims_of(operator_jwt)["nats"]["signing_keys"] == [upcoming, now_next]
    assert await finish_operator_rotation(sessions, sealer, settings) == 0


async def test_an_installation_without_a_next_key_only_gets_one_first(
    sessions: async_sessionmaker[AsyncSession], sealer: Sealer, settings: Settings
) -> None:
    await setup_operator_account(sessions, sealer, settings)
    _, active, upcoming = await _operator_state(sessions)
    # As an installation made before rotation existed: one signing key, nothing pre-published.
    async with sessions() as session, session.begin():
        await session.execute(
            delete(OperatorSigningKey).where(OperatorSigningKey.public_key == upcoming)
        )
        operator = await get_operator(session)
        await rotation.resign_operator(
            session, sealer, operator, account_server_url=rotation.operator_jwt_url(settings)
        )
    report = await rotate_operator(
        sessions,
        sealer,
        settings,
        actor=ADMIN,
        probe=Trusting(n1={active}),  # type: ignore[arg-type]
    )
    assert report.status == "prepared"
    assert "rotate --operator` again" in report.message
    operator_jwt, still_active, added = await _operator_state(sessions)
    # The active key keeps signing: servers do not know the added key until redeployed.
    assert still_active == active and added != upcoming
    assert claims_of(operator_jwt)["nats"]["signing_keys"] == [active, added]
    async with sessions() as session:
        assert decode((await get_account(session, "ORDERS")).jwt or "").issuer == active
    assert len(await audits(sessions, "operator.signing_key.prepare")) == 1
    with pytest.raises(ConflictError):
        async with sessions() as session, session.begin():
            await session.execute(
                delete(OperatorSigningKey).where(OperatorSigningKey.public_key == added)
            )
            await rotation.promote_next_operator_key(session, sealer, settings, actor=ADMIN)


async def _user(sessions: async_sessionmaker[AsyncSession], name: str) -> str:
    async with sessions() as session, session.begin():
        user = User(user_name=name, user_name_key=name)
        session.add(user)
        await session.flush()
        return user.id


async def test_account_rotation_keeps_old_keys_listed_until_their_users_expire(
    sessions: async_sessionmaker[AsyncSession], sealer: Sealer, settings: Settings
) -> None:
    acc = await setup_operator_account(sessions, sealer, settings)
    user_id = await _user(sessions, "ann")
    async with sessions() as session, session.begin():
        old_person = await issue(session, sealer, settings, acc, user_id, ["reader"], ttl=600)
        account = await get_account(session, "ORDERS")
        old_plain = (await plain_signing_key(session, account)).public_key
        old_scoped, _ = await scoped_key_for(session, sealer, account, ["reader"])
        old_scoped_key, old_template = old_scoped.public_key, old_scoped.template
        await issue_workload_creds(
            session, sealer, account, name="ci", ttl_seconds=300, actor=ADMIN
        )

    dry = await rotate_accounts(
        sessions, sealer, settings, actor=ADMIN, names=["ORDERS"], dry_run=True
    )
    assert dry.planned == {"ORDERS": 2}
    lines: list[str] = []
    report = await rotate_accounts(
        sessions, sealer, settings, actor=ADMIN, names=None, progress=lines.append
    )
    assert [r.name for r in report.rotated] == ["ORDERS"] and report.keys == 2
    # The system account is never rotated implicitly (its user never expires).
    assert "SYS" in report.skipped
    assert "rotated 2 signing key(s) in 1 account(s)" in report.summary()
    assert lines

    async with sessions() as session:
        account = await get_account(session, "ORDERS")
        new_plain = await plain_signing_key(session, account)
        new_scoped, created = await scoped_key_for(session, sealer, account, ["reader"])
        assert not created
        assert new_plain.public_key != old_plain and new_scoped.public_key != old_scoped_key
        assert new_scoped.template == old_template
        listed = listed_keys(account.jwt)
        # Old and new, the old scoped key with its template: old users stay connected.
        assert {old_plain, old_scoped_key, new_plain.public_key, new_scoped.public_key} <= set(
            listed
        )
        scoped = {
            k["key"]: k["template"]
            for k in claims_of(account.jwt)["nats"]["signing_keys"]
            if isinstance(k, dict)
        }
        assert scoped[old_scoped_key] == scoped[new_scoped.public_key]
    async with sessions() as session, session.begin():
        account = await get_account(session, "ORDERS")
        _, issued = await issue_workload_creds(
            session, sealer, account, name="ci", ttl_seconds=300, actor=ADMIN
        )
        assert issued.signing_key == new_plain.public_key
        person = await issue(session, sealer, settings, acc, user_id, ["reader"], ttl=600)
    assert decode(person.jwt).issuer == new_scoped.public_key
    [audit] = await audits(sessions, "account.signing_keys.rotate")
    assert audit.account_key == audit.target and audit.details["revoke_old"] is False
    assert set(audit.details["replaced"]) == {old_plain, old_scoped_key}

    # While their users' JWTs live, the old keys stay; once all expired, they are retired.
    assert await retire_drained(sessions, sealer, settings) == {}
    later = int(time.time()) + 601
    retired = await retire_drained(sessions, sealer, settings, now=later)
    assert sorted(next(iter(retired.values()))) == sorted([old_plain, old_scoped_key])
    async with sessions() as session:
        listed = listed_keys((await get_account(session, "ORDERS")).jwt)
    assert old_plain not in listed and old_scoped_key not in listed
    assert new_plain.public_key in listed and new_scoped.public_key in listed
    assert old_person.public_key  # issued before the rotation, expired by `later`


async def test_revoke_old_drops_old_keys_at_once(
    sessions: async_sessionmaker[AsyncSession], sealer: Sealer, settings: Settings
) -> None:
    await setup_operator_account(sessions, sealer, settings)
    await rotate_accounts(sessions, sealer, settings, actor=ADMIN, names=["ORDERS"])
    async with sessions() as session:
        account = await get_account(session, "ORDERS")
        first_old = list(
            await session.scalars(
                select(AccountSigningKey.public_key).where(
                    AccountSigningKey.account_id == account.id,
                    AccountSigningKey.superseded_at.is_not(None),
                )
            )
        )
    report = await rotate_accounts(
        sessions, sealer, settings, actor=ADMIN, names=["ORDERS"], revoke_old=True
    )
    [done] = report.rotated
    # The key just replaced and the one superseded before are both gone from the JWT.
    assert set(first_old) <= set(done.retired) and len(done.retired) == 2
    async with sessions() as session:
        account = await get_account(session, "ORDERS")
        listed = listed_keys(account.jwt)
        current = await plain_signing_key(session, account)
    assert listed == [current.public_key]


async def test_accounts_that_cannot_rotate_are_refused_by_name_and_nothing_changes(
    sessions: async_sessionmaker[AsyncSession], sealer: Sealer, settings: Settings
) -> None:
    await setup_operator_account(sessions, sealer, settings)
    async with sessions() as session:
        before = len(list(await session.scalars(select(AccountSigningKey.id))))
    for names in (["ORDERS", "SYS"], ["ORDERS", "NOPE"]):
        with pytest.raises(Exception) as caught:
            await rotate_accounts(sessions, sealer, settings, actor=ADMIN, names=names)
        assert caught.type.__name__ in {"ConflictError", "NotFoundError"}
    async with sessions() as session:
        assert len(list(await session.scalars(select(AccountSigningKey.id)))) == before


async def test_the_rotation_job_rotates_what_is_due_and_reconcile_is_registered(
    sessions: async_sessionmaker[AsyncSession],
    sealer: Sealer,
    settings: Settings,
    aiohttp_client: Callable[..., Any],
) -> None:
    await setup_operator_account(sessions, sealer, settings)
    _, active, upcoming = await _operator_state(sessions)
    due = replace(
        settings,
        jobs=replace(settings.jobs, operator_key_rotation_days=30, account_key_rotation_days=30),
    )
    app = create_app(due)
    specs = {spec.name: spec.every_seconds for spec in app[JOBS]}
    assert specs["rotate_signing_keys"] == settings.jobs.rotation_check_seconds
    assert specs["reconcile"] == settings.jobs.reconcile_seconds
    off = create_app(replace(settings, jobs=replace(settings.jobs, reconcile_seconds=0)))
    assert "reconcile" not in {spec.name for spec in off[JOBS]}
    await aiohttp_client(app)

    # Nothing is 30 days old yet: nothing rotates.
    assert await rotate_job.run(app) == {}
    async with sessions() as session, session.begin():
        old = utcnow() - timedelta(days=31)
        await session.execute(update(AccountSigningKey).values(created_at=old))
        await session.execute(
            update(OperatorSigningKey)
            .where(OperatorSigningKey.activated_at.is_not(None))
            .values(activated_at=old)
        )
    result = await rotate_job.run(app)
    # Account keys rotate (the system account's are left alone); the operator key waits:
    # with NATS off here, nobody can confirm the servers trust the next key.
    assert result["accounts"]["accounts_rotated"] == 1
    assert result["accounts"]["skipped"] == {}  # a schedule does not report what it never does
    assert result["operator"]["status"] == "refused"
    assert (await _operator_state(sessions))[1:] == (active, upcoming)
    assert await rotate_job.run(app) == {"operator": result["operator"]}
