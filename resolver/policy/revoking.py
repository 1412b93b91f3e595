"""Deprovisioning: revoke what people lost, re-sign each account once, queue the push.

Every change that can take access away (a SCIM membership diff, a deactivation or deletion,
a binding or role change) ends here with its candidates: account id → users who may have
lost something there. Who still reaches the account through any other group keeps it; who
does not gets a revocation entry for every user key issued to them in that account that
has not expired yet. Someone who kept the account but lost a role is revoked too when their
current JWT was signed for a role set that is no longer a subset of theirs (the old scoped
key would keep granting what they lost).

All in the caller's transaction, in set-based SQL, and each account is re-signed once
however many members changed, so a PATCH removing 500 members is one new account JWT.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Iterable, Mapping

from sqlalchemy import insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from resolver.accounts.service import is_managed_here, lock_account, resign_account
from resolver.audit.service import Actor, record
from resolver.config import Settings
from resolver.db.models import (
    Account,
    AccountSigningKey,
    Binding,
    Group,
    GroupMember,
    IssuedUserKey,
    Revocation,
)
from resolver.policy.access import IN_CHUNK, account_role_sets
from resolver.sealing import Sealer

log = logging.getLogger(__name__)

#: Audit rows list at most this many revoked keys (the count is always complete).
AUDIT_KEYS = 100


def _chunks(items: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(items), IN_CHUNK):
        yield items[start : start + IN_CHUNK]


async def add_revocations(
    session: AsyncSession, account: Account, user_keys: Collection[str], when: int, reason: str
) -> None:
    """Revocation entries for ``user_keys`` at ``when``; existing ones are moved forward only.

    The caller holds the account row lock (``lock_account``), so no concurrent transaction
    inserts the same (account, key) between the read and the insert.
    """
    keys = sorted(set(user_keys))
    existing: dict[str, int] = {}
    for chunk in _chunks(keys):
        rows = await session.execute(
            select(Revocation.public_key, Revocation.revoked_at).where(
                Revocation.account_id == account.id, Revocation.public_key.in_(chunk)
            )
        )
        existing.update({key: at for key, at in rows})
    older = [key for key, at in existing.items() if at < when]
    for chunk in _chunks(older):
        await session.execute(
            update(Revocation)
            .where(Revocation.account_id == account.id, Revocation.public_key.in_(chunk))
            .values(revoked_at=when, reason=reason)
            .execution_options(synchronize_session=False)
        )
    new = [key for key in keys if key not in existing]
    if new:
        await session.execute(
            insert(Revocation),
            [
                {"account_id": account.id, "public_key": key, "revoked_at": when, "reason": reason}
                for key in new
            ],
        )


async def _scoped_role_sets(session: AsyncSession, signing_keys: set[str]) -> dict[str, set[str]]:
    """signing key → its role set (scoped keys only)."""
    rows = await session.execute(
        select(AccountSigningKey.public_key, AccountSigningKey.role_set).where(
            AccountSigningKey.public_key.in_(sorted(signing_keys)),
            AccountSigningKey.role_set.is_not(None),
        )
    )
    return {key: set((role_set or "").split(",")) for key, role_set in rows}


async def revoke_lost_access(
    session: AsyncSession,
    sealer: Sealer,
    settings: Settings,
    candidates: Mapping[int, Collection[str]],
    *,
    actor: Actor,
    reason: str,
    exclude_bindings: Collection[int] = (),
    exclude_groups: Collection[str] = (),
    lost_everything: bool = False,
    now: int | None = None,
) -> set[int]:
    """Revoke the live user keys of candidates who lost the account (or a role) there.

    ``candidates``: account id → user ids that may have lost access. ``lost_everything``
    skips the "still reaches it?" check (a user being deleted). Returns the ids of the
    accounts re-signed, each once.
    """
    when = int(time.time()) if now is None else now
    resigned: set[int] = set()
    for account_id in sorted(candidates):
        users = sorted(set(candidates[account_id]))
        if not users:
            continue
        account = await session.get(Account, account_id)
        if account is None or account.deleted_at is not None or not is_managed_here(account):
            continue
        live: list[tuple[str, str, str]] = []
        for chunk in _chunks(users):
            rows = await session.execute(
                select(
                    IssuedUserKey.public_key, IssuedUserKey.user_id, IssuedUserKey.signing_key
                ).where(
                    IssuedUserKey.account_id == account_id,
                    IssuedUserKey.user_id.in_(chunk),
                    IssuedUserKey.revoked_at.is_(None),
                    or_(IssuedUserKey.expires_at.is_(None), IssuedUserKey.expires_at > when),
                )
            )
            live.extend((key, user, signer) for key, user, signer in rows)
        if not live:
            continue  # nothing was issued to them here: nothing to cut
        holders = {user for _, user, _ in live}
        reaching = (
            {}
            if lost_everything
            else await account_role_sets(
                session,
                account_id,
                holders,
                exclude_bindings=exclude_bindings,
                exclude_groups=exclude_groups,
            )
        )
        scoped = await _scoped_role_sets(session, {signer for _, _, signer in live})
        doomed = sorted(
            key
            for key, user, signer in live
            if user not in reaching or not scoped.get(signer, set()) <= reaching[user]
        )
        if not doomed:
            continue
        await lock_account(session, account)
        await add_revocations(session, account, doomed, when, reason)
        for chunk in _chunks(doomed):
            await session.execute(
                update(IssuedUserKey)
                .where(
                    IssuedUserKey.account_id == account_id,
                    IssuedUserKey.public_key.in_(chunk),
                    IssuedUserKey.revoked_at.is_(None),
                )
                .values(revoked_at=when)
                .execution_options(synchronize_session=False)
            )
        await resign_account(session, sealer, settings, account, force=True)
        resigned.add(account_id)
        users_cut = sorted({user for key, user, _ in live if key in set(doomed)})
        record(
            session,
            actor,
            "policy.revoke",
            target=account.public_key,
            details={
                "account": account.name,
                "reason": reason,
                "revoked_at": when,
                "count": len(doomed),
                "user_keys": doomed[:AUDIT_KEYS],
                "users": users_cut[:AUDIT_KEYS],
                "jti": account.jti,
            },
        )
        log.info("revoked %d user key(s) in account %s (%s)", len(doomed), account.name, reason)
    return resigned


async def resign_accounts(
    session: AsyncSession, sealer: Sealer, settings: Settings, account_ids: Iterable[int]
) -> set[int]:
    """Re-sign each account once (force) and queue its push; the ids re-signed."""
    done: set[int] = set()
    for account_id in sorted(set(account_ids)):
        account = await session.get(Account, account_id)
        if account is None or account.deleted_at is not None or not is_managed_here(account):
            continue
        if await resign_account(session, sealer, settings, account, force=True):
            done.add(account_id)
    return done


def _binding_group_clause(group: Group) -> object:
    return or_(Binding.group_id == group.id, Binding.group_name_key == group.display_name_key)


async def accounts_bound_to_group(session: AsyncSession, group_id: str) -> set[int]:
    """Accounts a group is bound to (by id or by displayName), expired bindings included:
    revoking more candidates than needed is harmless, missing one is not."""
    group = await session.get(Group, group_id)
    if group is None:
        return set()
    rows = await session.scalars(
        select(Binding.account_id).where(_binding_group_clause(group)).distinct()
    )
    return set(rows)


async def group_members(session: AsyncSession, group_id: str) -> list[str]:
    return list(
        await session.scalars(select(GroupMember.user_id).where(GroupMember.group_id == group_id))
    )


async def candidates_for_binding(session: AsyncSession, binding: Binding) -> dict[int, set[str]]:
    """account id → members of the binding's group (by id or displayName)."""
    if binding.group_id is not None:
        group_ids = [binding.group_id]
    elif binding.group_name_key is not None:
        group_ids = list(
            await session.scalars(
                select(Group.id).where(Group.display_name_key == binding.group_name_key)
            )
        )
    else:
        return {}  # a token-claim binding: its credentials never outlive the token
    members: set[str] = set()
    for group_id in group_ids:
        members.update(await group_members(session, group_id))
    return {binding.account_id: members} if members else {}


async def accounts_with_live_keys(session: AsyncSession, user_id: str, now: int) -> set[int]:
    rows = await session.scalars(
        select(IssuedUserKey.account_id)
        .where(
            IssuedUserKey.user_id == user_id,
            IssuedUserKey.revoked_at.is_(None),
            or_(IssuedUserKey.expires_at.is_(None), IssuedUserKey.expires_at > now),
        )
        .distinct()
    )
    return set(rows)
