"""Revocation lifecycle: size of the account JWT per entry count, compaction, pruning.

The refusal checks decode the account JWT as it is served and apply nats-server's rule
(DESIGN §2): a user JWT is refused when ``revocations[key] >= iat`` or
``revocations["*"] >= iat``.
"""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from resolver.accounts.service import MAX_CREDS_TTL, resign_account
from resolver.config import AccountSettings, Settings
from resolver.db.engine import create_sessionmaker
from resolver.db.models import Account, IssuedUserKey, Revocation, User
from resolver.natsjwt import new_keypair
from resolver.policy.deprovision import revoke_lost_access
from resolver.policy.revocations import CLOCK_SKEW, entry_bytes, revocation_summary
from resolver.sealing import Sealer, load_master_key
from tests.policy.deprovision_world import (
    ADMIN,
    account_row,
    audits,
    outbox_count,
    revocation_rows,
    served_revocations,
    setup_operator_account,
)

BUDGET = 819_200
BASE = 1_600_000_000  # issued and revoked in 2020; the keys expire in 2096 (FAR)
FAR = 4_000_000_000  # expiry of the keys in these tests


@pytest.fixture
def sealer(settings: Settings) -> Sealer:
    return Sealer(load_master_key(settings.master_key_path))


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return create_sessionmaker(engine)


def _budget(settings: Settings, budget: int) -> Settings:
    return replace(settings, accounts=replace(AccountSettings(), jwt_size_budget_bytes=budget))


def _refused(revocations: dict[str, int], key: str, iat: int) -> bool:
    return revocations.get(key, -1) >= iat or revocations.get("*", -1) >= iat


async def _revoked_keys(
    sessions: async_sessionmaker[AsyncSession], account_id: int, start: int, count: int
) -> list[tuple[str, int]]:
    """``count`` issued keys, each revoked one second after it was issued: (key, iat)."""
    made: list[tuple[str, int]] = []
    issued_rows = []
    revocation_rows_ = []
    for i in range(start, start + count):
        key = new_keypair("user")[0]
        iat = BASE + 2 * i
        made.append((key, iat))
        issued_rows.append(
            {
                "public_key": key,
                "account_id": account_id,
                "user_id": None,
                "name": f"w{i}",
                "signing_key": key,
                "jti": f"j{i}",
                "issued_at": iat,
                "expires_at": FAR,
                "revoked_at": iat + 1,
            }
        )
        revocation_rows_.append(
            {"account_id": account_id, "public_key": key, "revoked_at": iat + 1, "reason": "t"}
        )
    if made:
        async with sessions() as session, session.begin():
            await session.execute(insert(IssuedUserKey), issued_rows)
            await session.execute(insert(Revocation), revocation_rows_)
    return made


async def _live_key(
    sessions: async_sessionmaker[AsyncSession],
    account_id: int,
    iat: int,
    *,
    expires_at: int | None = FAR,
    user_id: str | None = None,
    public_key: str | None = None,
) -> str:
    key = public_key or new_keypair("user")[0]
    async with sessions() as session, session.begin():
        session.add(
            IssuedUserKey(
                public_key=key,
                account_id=account_id,
                user_id=user_id,
                name=f"live-{iat}",
                signing_key=key,
                jti="x",
                issued_at=iat,
                expires_at=expires_at,
            )
        )
    return key


async def _resign(
    sessions: async_sessionmaker[AsyncSession], sealer: Sealer, settings: Settings, account_id: int
) -> None:
    async with sessions() as session, session.begin():
        account = await session.get_one(Account, account_id)
        await resign_account(session, sealer, settings, account, force=True)


async def test_size_per_entry_count_and_compaction_keeps_everything_refused(
    sessions: async_sessionmaker[AsyncSession], sealer: Sealer, settings: Settings
) -> None:
    acc = await setup_operator_account(sessions, sealer, settings)
    roomy = _budget(settings, 1_048_576)
    revoked: list[tuple[str, int]] = []
    sizes: dict[int, int] = {}
    for total in (0, 100, 1_000, 5_000, 8_000):
        revoked += await _revoked_keys(sessions, acc, len(revoked), total - len(revoked))
        await _resign(sessions, sealer, roomy, acc)
        sizes[total] = len((await account_row(sessions, acc)).jwt or "")
    print("\nencoded account JWT size by revocation entries:")
    for total, size in sizes.items():
        per = (size - sizes[0]) / total if total else 0
        print(f"  {total:>6} entries: {size:>9,} bytes ({per:.1f} bytes/entry)")
    per_entry = (sizes[8_000] - sizes[0]) / 8_000
    assert 85 < per_entry < 100  # DESIGN §2 measured about 93
    assert abs(per_entry - entry_bytes(revoked[0][0], revoked[0][1] + 1)) < 2
    assert sizes[8_000] < BUDGET  # 8,000 entries fit the default budget

    # Users that nothing revoked: one issued before the entries (cut by a "*"), one after.
    early = await _live_key(sessions, acc, BASE - 10)
    late = await _live_key(sessions, acc, BASE + 10**7)
    pushes = await outbox_count(sessions, acc)

    # 10,000 entries are about 930 KB: over the default 800 KiB budget, so this compacts.
    revoked += await _revoked_keys(sessions, acc, len(revoked), 10_000 - len(revoked))
    await _resign(sessions, sealer, _budget(settings, BUDGET), acc)
    account = await account_row(sessions, acc)
    size = len(account.jwt or "")
    served = await served_revocations(sessions, acc)
    print(f"  10,000 entries after compaction: {size:,} bytes, {len(served)} entries left")
    assert size <= BUDGET
    assert size > 0.8 * BUDGET  # the fewest entries were folded, not all of them
    assert "*" in served and len(served) < 10_000
    # Every key revoked before is still refused; the late user is not.
    assert all(_refused(served, key, iat) for key, iat in revoked)
    assert not _refused(served, late, BASE + 10**7)
    assert _refused(served, early, BASE - 10)
    assert await outbox_count(sessions, acc) == pushes + 1

    # The "*" time is the newest time among the folded entries, no later.
    star = served["*"]
    folded = [(k, iat) for k, iat in revoked if k not in served]
    assert star == max(iat + 1 for _, iat in folded)
    assert all(served[k] > star for k, _ in revoked if k in served and k != "*")

    # Re-issue guidance names the cut user (no secrets), and marks its key revoked.
    (row,) = await audits(sessions, "account.revocations.compact")
    assert row.details["folded"] == len(folded) and row.details["wildcard_at"] == star
    assert [item["user_key"] for item in row.details["reissue"]] == [early]
    assert row.details["reissue_count"] == 1
    assert "seed" not in str(row.details).lower()
    async with sessions() as session:
        marked = await session.scalar(
            select(IssuedUserKey.revoked_at).where(IssuedUserKey.public_key == early)
        )
        summary = await revocation_summary(session, account, budget=BUDGET)
    assert marked is not None
    assert summary == {
        "jwt_bytes": size,
        "budget_bytes": BUDGET,
        "revocations": len(served),
        "wildcard_at": star,
    }


async def test_deprovision_over_budget_compacts_and_still_revokes(
    sessions: async_sessionmaker[AsyncSession], sealer: Sealer, settings: Settings
) -> None:
    small = _budget(settings, 40_000)
    acc = await setup_operator_account(sessions, sealer, small)
    revoked = await _revoked_keys(sessions, acc, 0, 500)  # about 46 KB of entries
    async with sessions() as session, session.begin():
        user = User(user_name="alice", user_name_key="alice")
        session.add(user)
        await session.flush()
        alice = user.id
    now = int(time.time())
    alice_key = await _live_key(sessions, acc, now - 5, expires_at=now + 3600, user_id=alice)
    async with sessions() as session, session.begin():
        resigned = await revoke_lost_access(
            session, sealer, small, {acc: [alice]}, actor=ADMIN, reason="left"
        )
    assert resigned == {acc}
    account = await account_row(sessions, acc)
    served = await served_revocations(sessions, acc)
    assert len(account.jwt or "") <= 40_000
    assert "*" in served and served[alice_key] >= now - 5  # the new entry is not folded
    assert all(_refused(served, key, iat) for key, iat in revoked)


async def test_prune_drops_only_entries_nothing_live_can_match(
    sessions: async_sessionmaker[AsyncSession], sealer: Sealer, settings: Settings
) -> None:
    from resolver.jobs.prune import prune_revocations

    acc = await setup_operator_account(sessions, sealer, settings)
    now = int(time.time())
    old = now - 2 * 86_400

    async def entry(key: str, at: int) -> None:
        async with sessions() as session, session.begin():
            session.add(Revocation(account_id=acc, public_key=key, revoked_at=at))

    # Every JWT of this key expired: the entry goes.
    dead = await _live_key(sessions, acc, old, expires_at=old + 3600)
    await entry(dead, old + 10)
    # Expired, but within the clock-skew allowance: kept.
    skewed = await _live_key(sessions, acc, old, expires_at=now - CLOCK_SKEW // 2)
    await entry(skewed, old + 10)
    # One JWT expired, another (issued before the entry) still valid: kept.
    mixed = await _live_key(sessions, acc, old, expires_at=old + 3600)
    await _live_key(sessions, acc, old + 5, expires_at=now + 3600, public_key=mixed)
    await entry(mixed, old + 10)
    # The key was used again after the entry: that JWT is not refused by it, so it goes.
    reused = await _live_key(sessions, acc, old, expires_at=old + 3600)
    await _live_key(sessions, acc, old + 100, expires_at=now + 3600, public_key=reused)
    await entry(reused, old + 10)
    # A key never recorded here: kept until the longest credential lifetime has passed.
    unknown_recent = new_keypair("user")[0]
    await entry(unknown_recent, old)
    unknown_ancient = new_keypair("user")[0]
    await entry(unknown_ancient, now - MAX_CREDS_TTL - CLOCK_SKEW - 10)
    # A "*" stays while any JWT issued before it is valid.
    await entry("*", old + 1)
    await _live_key(sessions, acc, old - 50, expires_at=None)  # never expires

    # A second account with nothing to prune is left alone.
    other = await setup_other(sessions, sealer, settings)
    keep = await _live_key(sessions, other, old, expires_at=now + 3600)
    async with sessions() as session, session.begin():
        session.add(Revocation(account_id=other, public_key=keep, revoked_at=old + 10))
    await _resign(sessions, sealer, settings, acc)
    await _resign(sessions, sealer, settings, other)
    pushes = {a: await outbox_count(sessions, a) for a in (acc, other)}

    result = await prune_revocations(sessions, sealer, settings, now=now)
    account = await account_row(sessions, acc)
    assert result == {account.public_key: 3}
    assert set(await revocation_rows(sessions, acc)) == {skewed, mixed, unknown_recent, "*"}
    assert set(await served_revocations(sessions, acc)) == {skewed, mixed, unknown_recent, "*"}
    assert {a: await outbox_count(sessions, a) - pushes[a] for a in pushes} == {acc: 1, other: 0}
    (row,) = await audits(sessions, "account.revocations.prune")
    assert row.details["count"] == 3
    assert set(row.details["user_keys"]) == {dead, reused, unknown_ancient}

    # Nothing left to prune: no re-sign at all.
    assert await prune_revocations(sessions, sealer, settings, now=now) == {}
    assert await outbox_count(sessions, acc) == pushes[acc] + 1


async def setup_other(
    sessions: async_sessionmaker[AsyncSession], sealer: Sealer, settings: Settings
) -> int:
    from tests.policy.deprovision_world import add_account

    return await add_account(sessions, sealer, settings, name="OTHER")
