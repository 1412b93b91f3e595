"""revoke_lost_access on SQLite and PostgreSQL: who loses what, and one re-sign per account."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from resolver.config import Settings
from resolver.db.models import Group, GroupMember, IssuedUserKey, User
from resolver.policy.deprovision import (
    candidates_for_binding,
    resign_accounts,
    revoke_lost_access,
)
from resolver.sealing import Sealer
from tests.accounts.conftest import sealer, sessions  # noqa: F401  (fixtures)
from tests.policy.deprovision_world import (
    ADMIN,
    account_row,
    add_account,
    audits,
    bind,
    issue,
    outbox_count,
    refused,
    revocation_rows,
    served_revocations,
    setup_operator_account,
)


async def _people(session: AsyncSession, *names: str) -> list[str]:
    users = [User(user_name=n, user_name_key=n, active=True) for n in names]
    session.add_all(users)
    await session.flush()
    return [u.id for u in users]


async def _group(session: AsyncSession, name: str, members: list[str]) -> str:
    group = Group(display_name=name, display_name_key=name.casefold())
    session.add(group)
    await session.flush()
    session.add_all([GroupMember(group_id=group.id, user_id=m) for m in members])
    await session.flush()
    return group.id


async def _leave(session: AsyncSession, group_id: str, user_id: str) -> None:
    await session.execute(
        delete(GroupMember).where(GroupMember.group_id == group_id, GroupMember.user_id == user_id)
    )


async def test_lost_access_is_revoked_once_and_audited(
    sessions: async_sessionmaker[AsyncSession], sealer: Sealer, settings: Settings
) -> None:
    acc = await setup_operator_account(sessions, sealer, settings)
    async with sessions() as session, session.begin():
        alice, bob = await _people(session, "alice", "bob")
        readers = await _group(session, "Readers", [alice, bob])
        await bind(session, acc, "reader", group_id=readers)
        bob_key = await issue(session, sealer, settings, acc, bob, ["reader"])
        bob_key2 = await issue(session, sealer, settings, acc, bob, ["reader"])
        alice_key = await issue(session, sealer, settings, acc, alice, ["reader"])
    pushes = await outbox_count(sessions, acc)
    jti = (await account_row(sessions, acc)).jti

    async with sessions() as session, session.begin():
        await _leave(session, readers, bob)
        resigned = await revoke_lost_access(
            session,
            sealer,
            settings,
            {acc: [bob, alice]},
            actor=ADMIN,
            reason="removed from Readers",
        )
    assert resigned == {acc}
    served = await served_revocations(sessions, acc)
    assert refused(served, bob_key) and refused(served, bob_key2)
    assert not refused(served, alice_key)
    assert (await account_row(sessions, acc)).jti != jti
    assert await outbox_count(sessions, acc) == pushes + 1
    async with sessions() as session:
        marked = dict(
            (
                await session.execute(select(IssuedUserKey.public_key, IssuedUserKey.revoked_at))
            ).all()
        )
    assert marked[bob_key.public_key] is not None and marked[alice_key.public_key] is None
    (row,) = await audits(sessions, "policy.revoke")
    assert row.actor == ADMIN.name
    assert row.details["count"] == 2 and row.details["reason"] == "removed from Readers"
    assert set(row.details["user_keys"]) == {bob_key.public_key, bob_key2.public_key}
    assert row.details["users"] == [bob]

    # Nothing more to take: no re-sign, no push, no second audit row.
    async with sessions() as session, session.begin():
        again = await revoke_lost_access(
            session, sealer, settings, {acc: [bob, alice]}, actor=ADMIN, reason="again"
        )
    assert again == set()
    assert await outbox_count(sessions, acc) == pushes + 1
    assert len(await audits(sessions, "policy.revoke")) == 1


async def test_still_reaching_through_another_group_keeps_access(
    sessions: async_sessionmaker[AsyncSession], sealer: Sealer, settings: Settings
) -> None:
    acc = await setup_operator_account(sessions, sealer, settings)
    async with sessions() as session, session.begin():
        (alice,) = await _people(session, "alice")
        g1 = await _group(session, "Readers", [alice])
        g2 = await _group(session, "Auditors", [alice])
        await bind(session, acc, "reader", group_id=g1)
        # By displayName, as a policy file written before the IdP pushed the group would.
        await bind(session, acc, "reader", group_name="AUDITORS")
        key = await issue(session, sealer, settings, acc, alice, ["reader"])
    pushes = await outbox_count(sessions, acc)
    async with sessions() as session, session.begin():
        await _leave(session, g1, alice)
        assert (
            await revoke_lost_access(
                session, sealer, settings, {acc: [alice]}, actor=ADMIN, reason="left Readers"
            )
            == set()
        )
    assert not refused(await served_revocations(sessions, acc), key)
    assert await revocation_rows(sessions, acc) == {}
    assert await outbox_count(sessions, acc) == pushes

    # The second group is being deleted (event before the row goes): it no longer counts.
    async with sessions() as session, session.begin():
        resigned = await revoke_lost_access(
            session,
            sealer,
            settings,
            {acc: [alice]},
            actor=ADMIN,
            reason="group deleted",
            exclude_groups={g2},
        )
    assert resigned == {acc}
    assert refused(await served_revocations(sessions, acc), key)


async def test_excluded_binding_grants_nothing(
    sessions: async_sessionmaker[AsyncSession], sealer: Sealer, settings: Settings
) -> None:
    acc = await setup_operator_account(sessions, sealer, settings)
    async with sessions() as session, session.begin():
        alice, bob = await _people(session, "alice", "bob")
        g1 = await _group(session, "Readers", [alice, bob])
        binding = await bind(session, acc, "reader", group_id=g1)
        keys = [await issue(session, sealer, settings, acc, u, ["reader"]) for u in (alice, bob)]
        binding_id = binding.id
    async with sessions() as session, session.begin():
        candidates = await candidates_for_binding(session, binding_id)
        assert candidates == {acc: {alice, bob}}
        resigned = await revoke_lost_access(
            session,
            sealer,
            settings,
            candidates,
            actor=ADMIN,
            reason="binding deleted",
            exclude_bindings={binding_id},
        )
    assert resigned == {acc}
    served = await served_revocations(sessions, acc)
    assert all(refused(served, k) for k in keys)


async def test_candidates_for_binding_by_display_name_and_unknown(
    sessions: async_sessionmaker[AsyncSession], sealer: Sealer, settings: Settings
) -> None:
    acc = await setup_operator_account(sessions, sealer, settings)
    async with sessions() as session, session.begin():
        alice, bob = await _people(session, "alice", "bob")
        await _group(session, "Readers", [alice])
        await _group(session, "Other", [bob])
        binding = await bind(session, acc, "reader", group_name="readers")
        assert await candidates_for_binding(session, binding.id) == {acc: {alice}}
        assert await candidates_for_binding(session, binding.id + 999) == {}


async def test_role_set_shrank_revokes_only_keys_granting_more(
    sessions: async_sessionmaker[AsyncSession], sealer: Sealer, settings: Settings
) -> None:
    acc = await setup_operator_account(sessions, sealer, settings)
    async with sessions() as session, session.begin():
        (alice,) = await _people(session, "alice")
        readers = await _group(session, "Readers", [alice])
        writers = await _group(session, "Writers", [alice])
        await bind(session, acc, "reader", group_id=readers)
        await bind(session, acc, "writer", group_id=writers)
        both = await issue(session, sealer, settings, acc, alice, ["reader", "writer"])
        only_reader = await issue(session, sealer, settings, acc, alice, ["reader"])
    async with sessions() as session, session.begin():
        await _leave(session, writers, alice)
        resigned = await revoke_lost_access(
            session, sealer, settings, {acc: [alice]}, actor=ADMIN, reason="left Writers"
        )
    assert resigned == {acc}
    served = await served_revocations(sessions, acc)
    assert refused(served, both)  # would still grant writer's permissions
    assert not refused(served, only_reader)


async def test_inactive_user_and_excluded_user_reach_nothing(
    sessions: async_sessionmaker[AsyncSession], sealer: Sealer, settings: Settings
) -> None:
    acc = await setup_operator_account(sessions, sealer, settings)
    async with sessions() as session, session.begin():
        alice, bob = await _people(session, "alice", "bob")
        g1 = await _group(session, "Readers", [alice, bob])
        await bind(session, acc, "reader", group_id=g1)
        alice_key = await issue(session, sealer, settings, acc, alice, ["reader"])
        bob_key = await issue(session, sealer, settings, acc, bob, ["reader"])
    async with sessions() as session, session.begin():
        (await session.get_one(User, alice)).active = False
        await session.flush()
        await revoke_lost_access(
            session,
            sealer,
            settings,
            {acc: [alice, bob]},
            actor=ADMIN,
            reason="alice deactivated, bob deleted",
            exclude_users={bob},
        )
    served = await served_revocations(sessions, acc)
    assert refused(served, alice_key) and refused(served, bob_key)


async def test_many_accounts_each_resigned_once_and_expired_keys_ignored(
    sessions: async_sessionmaker[AsyncSession], sealer: Sealer, settings: Settings
) -> None:
    acc1 = await setup_operator_account(sessions, sealer, settings)
    acc2 = await add_account(sessions, sealer, settings, name="BILLING")
    acc3 = await add_account(sessions, sealer, settings, name="EMPTY")
    async with sessions() as session, session.begin():
        users = await _people(session, *[f"u{i}" for i in range(40)])
        await _group(session, "Nobody", [])
        for acc in (acc1, acc2):
            for user in users:
                await issue(session, sealer, settings, acc, user, ["reader"])
        # Expired long ago: nothing left to revoke for this one.
        old = await issue(
            session, sealer, settings, acc3, users[0], ["reader"], ttl=60, iat=1_000_000
        )
    before = {a: await outbox_count(sessions, a) for a in (acc1, acc2, acc3)}
    async with sessions() as session, session.begin():
        resigned = await revoke_lost_access(
            session,
            sealer,
            settings,
            {acc1: users, acc2: users, acc3: users},
            actor=ADMIN,
            reason="reorg",
        )
    assert resigned == {acc1, acc2}
    assert {a: await outbox_count(sessions, a) - before[a] for a in before} == {
        acc1: 1,
        acc2: 1,
        acc3: 0,
    }
    assert len(await revocation_rows(sessions, acc1)) == 40
    assert old.public_key not in await revocation_rows(sessions, acc3)


async def test_existing_entry_never_moves_back(
    sessions: async_sessionmaker[AsyncSession], sealer: Sealer, settings: Settings
) -> None:
    acc = await setup_operator_account(sessions, sealer, settings)
    async with sessions() as session, session.begin():
        (alice,) = await _people(session, "alice")
        key = await issue(session, sealer, settings, acc, alice, ["reader"])
        later = await issue(session, sealer, settings, acc, alice, ["reader"])
    future = key.iat + 1_000
    async with sessions() as session, session.begin():
        await revoke_lost_access(
            session, sealer, settings, {acc: [alice]}, actor=ADMIN, reason="x", now=future
        )
    assert (await revocation_rows(sessions, acc))[key.public_key] == future
    # A later call for a key already entered at a newer time leaves the entry alone.
    async with sessions() as session, session.begin():
        await session.execute(
            IssuedUserKey.__table__.update()
            .where(IssuedUserKey.public_key == later.public_key)
            .values(revoked_at=None)
        )
        await revoke_lost_access(
            session, sealer, settings, {acc: [alice]}, actor=ADMIN, reason="y", now=future - 500
        )
    rows = await revocation_rows(sessions, acc)
    assert rows[key.public_key] == future and rows[later.public_key] == future


async def test_resign_accounts_skips_unknown_and_resigns_once(
    sessions: async_sessionmaker[AsyncSession], sealer: Sealer, settings: Settings
) -> None:
    acc = await setup_operator_account(sessions, sealer, settings)
    before = await outbox_count(sessions, acc)
    async with sessions() as session, session.begin():
        assert await resign_accounts(session, sealer, settings, [acc, acc, 9_999]) == {acc}
    assert await outbox_count(sessions, acc) == before + 1
