from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from resolver.accounts import service
from resolver.accounts.changes import changed_keys
from resolver.accounts.operator import operator_signing_keys
from resolver.config import AccountSettings, Settings
from resolver.db.models import Account, AuditEntry, IssuedUserKey, Operator, Revocation
from resolver.errors import ConflictError, NotFoundError, ValidationError
from resolver.natsjwt import decode, new_keypair, parse_creds, public_key_of
from resolver.sealing import Sealer
from tests.accounts.conftest import ADMIN, outbox_rows

Sessions = async_sessionmaker[AsyncSession]


async def create(
    sessions: Sessions, sealer: Sealer, settings: Settings, name: str = "ACME", **kw: object
) -> Account:
    async with sessions() as session, session.begin():
        return await service.create_account(session, sealer, settings, name=name, actor=ADMIN, **kw)


async def test_create_account_signs_with_the_operator_signing_key(
    sessions: Sessions, sealer: Sealer, settings: Settings, operator: Operator
) -> None:
    account = await create(sessions, sealer, settings, spec={"limits": {"conn": 10}})
    token = decode(account.jwt, expected_type="account")
    async with sessions() as session:
        signing_keys = await operator_signing_keys(session, operator)
        stored = await session.get_one(Account, account.id)
        audit = await session.scalar(
            select(AuditEntry).where(AuditEntry.action == "account.create")
        )
    assert token.issuer in signing_keys and token.issuer != operator.public_key
    assert token.subject == account.public_key and token.name == "ACME"
    limits = token.nats["limits"]
    # Explicit values: -1 unlimited, except what the spec set; nothing left to default to 0.
    assert limits["conn"] == 10
    assert limits["subs"] == limits["data"] == limits["payload"] == limits["leaf"] == -1
    assert limits["imports"] == limits["exports"] == -1 and limits["wildcards"] is True
    # One plain account signing key, listed in the JWT.
    assert len(token.nats["signing_keys"]) == 1
    assert token.nats["signing_keys"][0] != account.public_key
    # Stored: JWT, jti, iat, exp (default 24 h), sealed seed only.
    assert stored.jwt == account.jwt and stored.jti == token.jti
    assert stored.issued_at == token.iat and stored.expires_at == token.exp
    assert token.exp - token.iat == pytest.approx(86_400, abs=2)
    seed = sealer.open(stored.seed_sealed)
    assert public_key_of(seed) == account.public_key and seed not in stored.seed_sealed
    rows = await outbox_rows(sessions, account.public_key)
    assert [(r.jti, r.jwt) for r in rows] == [(token.jti, account.jwt)]
    assert audit is not None and audit.actor == "test-admin" and audit.target == account.public_key


async def test_account_jwt_lifetime_is_configurable(
    sessions: Sessions, sealer: Sealer, settings: Settings, operator: Operator
) -> None:
    short = replace(settings, accounts=AccountSettings(jwt_ttl_seconds=3_600))
    token = decode((await create(sessions, sealer, short)).jwt)
    assert token.exp - token.iat == pytest.approx(3_600, abs=2)


@pytest.mark.parametrize(
    ("name", "spec", "error"),
    [
        ("", None, ValidationError),
        ("-leading-dash", None, ValidationError),
        ("x" * 201, None, ValidationError),
        ("ok", {"limits": {"conn": "ten"}}, ValidationError),
        ("ok", {"limits": {"bogus": 1}}, ValidationError),
        ("ok", {"limits": {"conn": -5}}, ValidationError),
        ("ok", {"colour": "red"}, ValidationError),
        ("ok", {"tags": "a"}, ValidationError),
        (
            "ok",
            {"imports": [{"subject": "x", "type": "stream", "account": "nope"}]},
            ValidationError,
        ),
        ("ok", ["not", "a", "dict"], ValidationError),
    ],
)
async def test_create_account_refuses_bad_input(
    sessions: Sessions,
    sealer: Sealer,
    settings: Settings,
    operator: Operator,
    name: str,
    spec: object,
    error: type[Exception],
) -> None:
    with pytest.raises(error):
        await create(sessions, sealer, settings, name=name, spec=spec)
    async with sessions() as session:
        assert await session.scalar(select(Account).where(Account.name == name)) is None


async def test_create_account_name_is_unique(
    sessions: Sessions, sealer: Sealer, settings: Settings, operator: Operator
) -> None:
    await create(sessions, sealer, settings)
    with pytest.raises(ConflictError):
        await create(sessions, sealer, settings)
    # Names shaped like account keys would make `--account REF` ambiguous.
    with pytest.raises(ValidationError):
        await create(sessions, sealer, settings, name=new_keypair("account")[0])


async def test_get_account_by_name_or_key(
    sessions: Sessions, sealer: Sealer, settings: Settings, operator: Operator
) -> None:
    account = await create(sessions, sealer, settings)
    async with sessions() as session:
        assert (await service.get_account(session, "ACME")).id == account.id
        assert (await service.get_account(session, account.public_key)).id == account.id
        with pytest.raises(NotFoundError):
            await service.get_account(session, "nope")
        with pytest.raises(NotFoundError):
            await service.get_account(session, new_keypair("account")[0])


async def test_resign_of_unchanged_claims_is_a_no_op(
    sessions: Sessions, sealer: Sealer, settings: Settings, operator: Operator
) -> None:
    account = await create(sessions, sealer, settings)
    async with sessions() as session, session.begin():
        row = await session.get_one(Account, account.id)
        # Later in time, so only iat/jti/exp would differ.
        assert not await service.resign_account(
            session, sealer, settings, row, now=int(time.time()) + 120
        )
        assert changed_keys(session) == frozenset()
        assert row.jwt == account.jwt
    assert len(await outbox_rows(sessions, account.public_key)) == 1

    # A real change re-signs and pushes.
    async with sessions() as session, session.begin():
        row = await session.get_one(Account, account.id)
        row.spec = {"limits": {"conn": 5}, "description": "changed"}
        assert await service.resign_account(session, sealer, settings, row)
        assert changed_keys(session) == {account.public_key}
    changed = decode(row.jwt)
    assert changed.nats["limits"]["conn"] == 5 and changed.nats["description"] == "changed"
    rows = await outbox_rows(sessions, account.public_key)
    assert [r.jti for r in rows] == [account.jti, changed.jti]


async def test_forced_resigns_in_one_second_still_get_distinct_jtis(
    sessions: Sessions, sealer: Sealer, settings: Settings, operator: Operator
) -> None:
    account = await create(sessions, sealer, settings)
    now = account.issued_at
    seen = {account.jti}
    iats = [account.issued_at]
    async with sessions() as session, session.begin():
        row = await session.get_one(Account, account.id)
        for _ in range(3):
            assert await service.resign_account(session, sealer, settings, row, force=True, now=now)
            seen.add(row.jti)
            iats.append(row.issued_at)
    # jti hashes only the standard fields, so an unchanged iat would repeat it (and the ETag).
    assert len(seen) == 4
    assert iats == sorted(set(iats))


async def test_resign_near_expiry_renews_even_unchanged_claims(
    sessions: Sessions, sealer: Sealer, settings: Settings, operator: Operator
) -> None:
    account = await create(sessions, sealer, settings)
    window = service.resign_window(settings.accounts.jwt_ttl_seconds)
    assert window == 6 * 3_600  # max(1 h, 24 h / 4)
    outside = account.expires_at - window - 10
    inside = account.expires_at - window + 10
    async with sessions() as session, session.begin():
        row = await session.get_one(Account, account.id)
        assert not await service.resign_account(session, sealer, settings, row, now=outside)
        assert await service.resign_account(session, sealer, settings, row, now=inside)
    assert row.expires_at == inside + settings.accounts.jwt_ttl_seconds
    assert len(await outbox_rows(sessions, account.public_key)) == 2


def test_resign_window_bounds() -> None:
    assert service.resign_window(86_400) == 21_600
    assert service.resign_window(4 * 86_400) == 86_400
    # Short lifetimes: at most half of it, so a fresh JWT is not already due.
    assert service.resign_window(1_800) == 900


async def test_workload_creds_are_valid_and_recorded(
    sessions: Sessions, sealer: Sealer, settings: Settings, operator: Operator
) -> None:
    account = await create(sessions, sealer, settings)
    before = int(time.time())
    async with sessions() as session, session.begin():
        row = await session.get_one(Account, account.id)
        creds, issued = await service.issue_workload_creds(
            session, sealer, row, name="billing-worker", ttl_seconds=3_600, actor=ADMIN
        )
    user_jwt, seed = parse_creds(creds)
    user = decode(user_jwt, expected_type="user")
    account_token = decode(account.jwt)
    assert user.issuer_account == account.public_key
    assert user.issuer in account_token.nats["signing_keys"] and user.issuer != account.public_key
    assert user.iat >= before and user.exp == user.iat + 3_600
    assert user.name == "billing-worker" and user.subject == issued.public_key
    async with sessions() as session:
        stored = await session.scalar(
            select(IssuedUserKey).where(IssuedUserKey.public_key == user.subject)
        )
        audit = await session.scalar(
            select(AuditEntry).where(AuditEntry.action == "account.user.issue")
        )
    assert stored is not None and stored.account_id == account.id and stored.user_id is None
    assert stored.expires_at == user.exp and stored.issued_at == user.iat
    assert stored.signing_key == user.issuer and stored.jti == user.jti
    assert stored.revoked_at is None
    assert audit is not None and seed.decode() not in str(audit.details)
    # Issuing creds does not touch the account JWT.
    assert len(await outbox_rows(sessions, account.public_key)) == 1


@pytest.mark.parametrize(
    ("name", "ttl"), [("", 3_600), ("ok", 0), ("ok", 59), ("ok", 400 * 86_400), ("ok", True)]
)
async def test_workload_creds_refuse_bad_input(
    sessions: Sessions,
    sealer: Sealer,
    settings: Settings,
    operator: Operator,
    name: str,
    ttl: int,
) -> None:
    account = await create(sessions, sealer, settings)
    async with sessions() as session, session.begin():
        row = await session.get_one(Account, account.id)
        with pytest.raises(ValidationError):
            await service.issue_workload_creds(
                session, sealer, row, name=name, ttl_seconds=ttl, actor=ADMIN
            )


async def test_revocation_is_served_and_survives_resigns(
    sessions: Sessions, sealer: Sealer, settings: Settings, operator: Operator
) -> None:
    account = await create(sessions, sealer, settings)
    async with sessions() as session, session.begin():
        row = await session.get_one(Account, account.id)
        _, issued = await service.issue_workload_creds(
            session, sealer, row, name="w", ttl_seconds=3_600, actor=ADMIN
        )
    async with sessions() as session, session.begin():
        row = await session.get_one(Account, account.id)
        at = await service.revoke_user_key(
            session, sealer, settings, row, issued.public_key, actor=ADMIN
        )
    revoked = decode(row.jwt)
    # nats-server refuses the user when revocations[key] >= user iat.
    assert revoked.nats["revocations"] == {issued.public_key: at}
    assert at >= issued.issued_at
    assert revoked.iat > account.issued_at
    async with sessions() as session:
        stored = await session.get_one(IssuedUserKey, issued.id)
        entry = await session.scalar(select(Revocation))
    assert stored.revoked_at == at and entry is not None and entry.revoked_at == at
    assert [r.jti for r in await outbox_rows(sessions, account.public_key)] == [
        account.jti,
        revoked.jti,
    ]

    # A spec change re-signs: the revocation stays.
    async with sessions() as session, session.begin():
        row = await session.get_one(Account, account.id)
        row.spec = {"description": "after revocation"}
        assert await service.resign_account(session, sealer, settings, row)
    assert decode(row.jwt).nats["revocations"] == {issued.public_key: at}

    # Revoking again with an earlier time never moves the entry back.
    async with sessions() as session, session.begin():
        row = await session.get_one(Account, account.id)
        again = await service.revoke_user_key(
            session, sealer, settings, row, issued.public_key, actor=ADMIN, at=at - 100
        )
    assert again == at and decode(row.jwt).nats["revocations"] == {issued.public_key: at}


async def test_revoke_refuses_what_is_not_a_user_key(
    sessions: Sessions, sealer: Sealer, settings: Settings, operator: Operator
) -> None:
    account = await create(sessions, sealer, settings)
    async with sessions() as session, session.begin():
        row = await session.get_one(Account, account.id)
        for bad in ("", "U123", account.public_key, "SUAEXAMPLE"):
            with pytest.raises(ValidationError):
                await service.revoke_user_key(session, sealer, settings, row, bad, actor=ADMIN)
        await service.revoke_user_key(session, sealer, settings, row, "*", actor=ADMIN)
    assert "*" in decode(row.jwt).nats["revocations"]


async def test_accounts_managed_elsewhere_are_not_signed_here(
    sessions: Sessions, sealer: Sealer, settings: Settings, operator: Operator
) -> None:
    public_key = new_keypair("account")[0]
    async with sessions() as session, session.begin():
        external = Account(
            operator_id=operator.id, name="ext", public_key=public_key, seed_sealed=None, spec={}
        )
        session.add(external)
        await session.flush()
        assert not await service.resign_account(session, sealer, settings, external, force=True)
        assert external.jwt is None
        with pytest.raises(ConflictError):
            await service.issue_workload_creds(
                session, sealer, external, name="w", ttl_seconds=3_600, actor=ADMIN
            )
        with pytest.raises(ConflictError):
            await service.revoke_user_key(
                session, sealer, settings, external, new_keypair("user")[0], actor=ADMIN
            )


async def test_concurrent_revocations_both_reach_the_served_jwt(
    sessions: Sessions, sealer: Sealer, settings: Settings, operator: Operator
) -> None:
    account = await create(sessions, sealer, settings)
    users = [new_keypair("user")[0] for _ in range(4)]

    async def revoke(user_key: str) -> str:
        async with sessions() as session, session.begin():
            # Loaded before the others commit: the stale view a racing request would have.
            row = await session.get_one(Account, account.id)
            await asyncio.sleep(0)
            await service.revoke_user_key(session, sealer, settings, row, user_key, actor=ADMIN)
            return row.jti

    jtis = await asyncio.gather(*(revoke(user) for user in users))
    async with sessions() as session:
        final = await session.get_one(Account, account.id)
    assert set(decode(final.jwt).nats["revocations"]) == set(users)
    assert len(set(jtis)) == len(users)
    pushed = [r.jti for r in await outbox_rows(sessions, account.public_key)]
    assert pushed[-1] == final.jti and len(set(pushed)) == len(pushed) == len(users) + 1


async def test_concurrent_revocations_of_one_key_make_one_entry(
    sessions: Sessions, sealer: Sealer, settings: Settings, operator: Operator
) -> None:
    account = await create(sessions, sealer, settings)
    user = new_keypair("user")[0]

    async def revoke() -> int:
        async with sessions() as session, session.begin():
            row = await session.get_one(Account, account.id)
            await asyncio.sleep(0)
            return await service.revoke_user_key(session, sealer, settings, row, user, actor=ADMIN)

    times = await asyncio.gather(revoke(), revoke(), revoke())
    async with sessions() as session:
        entries = list(await session.scalars(select(Revocation)))
        final = await session.get_one(Account, account.id)
    assert [e.public_key for e in entries] == [user]
    assert decode(final.jwt).nats["revocations"] == {user: max(times)}
