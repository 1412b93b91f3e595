"""Deprovisioning: revoke what people lost, re-sign each account once, queue the push.

Every change that can take access away (a SCIM membership diff, a deactivation or deletion,
a binding deleted or lapsed, a role change) ends here with its candidates: account id →
users who may have lost something there. Who still reaches the account through any other
group keeps it; who does not gets a revocation entry for every user key issued to them in
that account that has not expired yet. Someone who kept the account but lost a role is
revoked too when their JWT was signed by a scoped key whose role set is no longer a subset
of theirs (the old key would go on granting what they lost).

All of it runs in the caller's transaction, in set-based SQL (chunked ``IN`` lists, never
one round trip per member), and each account is re-signed once however many members
changed: a PATCH removing 500 members is one new account JWT and one outbox row.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Iterable, Mapping, Sequence

from sqlalchemy import and_, insert, or_, select, update
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
    IssuedKeyClaim,
    IssuedUserKey,
    Revocation,
)
from resolver.policy.access import IN_CHUNK, account_role_sets
from resolver.sealing import Sealer

log = logging.getLogger(__name__)

#: Audit rows list at most this many revoked keys and users (the count is always complete).
AUDIT_KEYS = 200


def chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    """``items`` in slices small enough for one ``IN (...)`` on every backend."""
    for start in range(0, len(items), IN_CHUNK):
        yield items[start : start + IN_CHUNK]


def _live(now: int) -> object:
    """Issued keys still worth revoking: not revoked yet and not expired."""
    return and_(
        IssuedUserKey.revoked_at.is_(None),
        or_(IssuedUserKey.expires_at.is_(None), IssuedUserKey.expires_at >= now),
    )


async def add_revocations(
    session: AsyncSession, account_id: int, user_keys: Collection[str], when: int, reason: str
) -> None:
    """Revocation entries for ``user_keys`` at ``when``; an existing one only moves forward.

    Moving an entry back in time would revive the JWTs issued between the two times. The
    caller holds the account row lock (``lock_account``), so no concurrent transaction
    inserts the same (account, key) between the read and the insert here.
    """
    keys = sorted(set(user_keys))
    existing: dict[str, int] = {}
    for chunk in chunks(keys):
        rows = await session.execute(
            select(Revocation.public_key, Revocation.revoked_at).where(
                Revocation.account_id == account_id, Revocation.public_key.in_(chunk)
            )
        )
        existing.update({key: at for key, at in rows})
    older = [key for key, at in existing.items() if at < when]
    for chunk in chunks(older):
        await session.execute(
            update(Revocation)
            .where(
                Revocation.account_id == account_id,
                Revocation.public_key.in_(chunk),
                Revocation.revoked_at < when,
            )
            .values(revoked_at=when, reason=reason[:200])
            .execution_options(synchronize_session=False)
        )
    new = [key for key in keys if key not in existing]
    if new:
        await session.execute(
            insert(Revocation),
            [
                {
                    "account_id": account_id,
                    "public_key": key,
                    "revoked_at": when,
                    "reason": reason[:200],
                }
                for key in new
            ],
        )


async def _scoped_role_sets(
    session: AsyncSession, signing_keys: Collection[str]
) -> dict[str, frozenset[str]]:
    """signing key → the role set it was made for (scoped keys only)."""
    found: dict[str, frozenset[str]] = {}
    for chunk in chunks(sorted(set(signing_keys))):
        rows = await session.execute(
            select(AccountSigningKey.public_key, AccountSigningKey.role_set).where(
                AccountSigningKey.public_key.in_(chunk),
                AccountSigningKey.role_set.is_not(None),
            )
        )
        found.update({key: frozenset((roles or "").split(",")) for key, roles in rows})
    return found


async def _live_keys(
    session: AsyncSession, account_id: int, users: Sequence[str], now: int
) -> list[tuple[str, str, str, str]]:
    """(user key, user id, signing key, holder name) of every live key issued to ``users``
    here; the name is the JWT's (the userName then), for the audit row."""
    live: list[tuple[str, str, str, str]] = []
    for chunk in chunks(users):
        rows = await session.execute(
            select(
                IssuedUserKey.public_key,
                IssuedUserKey.user_id,
                IssuedUserKey.signing_key,
                IssuedUserKey.name,
            ).where(
                IssuedUserKey.account_id == account_id,
                IssuedUserKey.user_id.in_(chunk),
                _live(now),
            )
        )
        live.extend((key, user, signer, name) for key, user, signer, name in rows)
    return live


async def _live_claim_keys(
    session: AsyncSession, account_id: int, binding_ids: Collection[int], now: int
) -> dict[str, str]:
    """user key → holder name, for live keys issued here on one of ``binding_ids``."""
    if not binding_ids:
        return {}
    rows = await session.execute(
        select(IssuedUserKey.public_key, IssuedUserKey.name)
        .join(IssuedKeyClaim, IssuedKeyClaim.issued_key_id == IssuedUserKey.id)
        .where(
            IssuedUserKey.account_id == account_id,
            IssuedKeyClaim.binding_id.in_(sorted(set(binding_ids))),
            _live(now),
        )
    )
    return {key: name for key, name in rows}


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
    exclude_users: Collection[str] = (),
    claim_bindings: Mapping[int, Collection[int]] | None = None,
    now: int | None = None,
) -> set[int]:
    """Revoke the live user keys of candidates who lost the account (or a role) there.

    ``candidates``: account id → user ids that may have lost access there. Bindings in
    ``exclude_bindings`` and groups in ``exclude_groups`` grant nothing (they are being
    deleted: the event comes before the row goes); users in ``exclude_users`` reach
    nothing (a user being deleted). Inactive users reach nothing anyway.
    ``claim_bindings``: account id → claim bindings going away there; every live key
    issued on them is revoked (a workload whose token still matches another binding
    exchanges it again). Each account with a revocation is re-signed once (which queues
    its push) and gets one audit row. Returns the ids of the accounts re-signed.
    """
    when = int(time.time()) if now is None else now
    gone = set(exclude_users)
    resigned: set[int] = set()
    claims = claim_bindings or {}
    for account_id in sorted(set(candidates) | set(claims)):
        users = sorted(set(candidates.get(account_id, ())))
        if not users and not claims.get(account_id):
            continue
        account = await session.get(Account, account_id)
        if account is None or account.deleted_at is not None or not is_managed_here(account):
            # Deleted: already locked out with zero connections. nsc-managed: not ours.
            continue
        # Locked before reading the issued keys: a credential issued concurrently either
        # committed before (and is revoked here) or waits and then sees the new membership.
        await lock_account(session, account)
        live = await _live_keys(session, account_id, users, when)
        on_claims = await _live_claim_keys(session, account_id, claims.get(account_id, ()), when)
        if not live and not on_claims:
            continue  # nothing was issued to them here: nothing to cut
        holders = sorted({user for _, user, _, _ in live} - gone)
        reaching = await account_role_sets(
            session,
            account_id,
            holders,
            exclude_bindings=exclude_bindings,
            exclude_groups=exclude_groups,
        )
        scoped = await _scoped_role_sets(session, {signer for _, _, signer, _ in live})
        names = {key: name for key, _, _, name in live} | on_claims
        doomed: dict[str, str] = {}
        for key, user, signer, _ in live:
            roles = reaching.get(user)
            if roles is None:
                doomed[key] = user  # lost the account
            elif signer in scoped and not scoped[signer] <= roles:
                doomed[key] = user  # kept the account, lost a role this JWT still grants
        doomed.update(on_claims)
        if not doomed:
            continue
        keys = sorted(doomed)
        await add_revocations(session, account_id, keys, when, reason)
        for chunk in chunks(keys):
            await session.execute(
                update(IssuedUserKey)
                .where(
                    IssuedUserKey.account_id == account_id,
                    IssuedUserKey.public_key.in_(chunk),
                    IssuedUserKey.revoked_at.is_(None),
                    IssuedUserKey.issued_at <= when,
                )
                .values(revoked_at=when)
                .execution_options(synchronize_session=False)
            )
        await resign_account(session, sealer, settings, account, force=True)
        resigned.add(account_id)
        users_cut = sorted(set(doomed.values()))
        names_cut = sorted({names[key] for key in keys})
        record(
            session,
            actor,
            "policy.revoke",
            target=account.public_key,
            details={
                "account": account.name,
                "reason": reason,
                "revoked_at": when,
                "count": len(keys),
                "user_keys": keys[:AUDIT_KEYS],
                "users": users_cut[:AUDIT_KEYS],
                "names": names_cut[:AUDIT_KEYS],
                "jti": account.jti,
            },
            # One person's deprovision (the usual case) names them; a group's lists them.
            user=names_cut[0] if len(names_cut) == 1 else None,
            account=account.public_key,
        )
        log.info(
            "revoked %d user key(s) of %d user(s) in account %s: %s",
            len(keys),
            len(users_cut),
            account.name,
            reason,
        )
    return resigned


async def resign_accounts(
    session: AsyncSession, sealer: Sealer, settings: Settings, account_ids: Iterable[int]
) -> set[int]:
    """Re-sign each account once (force) and queue its push; the ids re-signed.

    Deleted accounts and accounts managed elsewhere (nsc) are skipped.
    """
    done: set[int] = set()
    for account_id in sorted(set(account_ids)):
        account = await session.get(Account, account_id)
        if account is None or account.deleted_at is not None or not is_managed_here(account):
            continue
        if await resign_account(session, sealer, settings, account, force=True):
            done.add(account_id)
    return done


async def accounts_bound_to_group(session: AsyncSession, group_id: str) -> set[int]:
    """Accounts a group is bound to (by SCIM id or by displayName), ended bindings included.

    A candidate too many costs one membership query; one too few would leave a key alive.
    """
    group = await session.get(Group, group_id)
    if group is None:
        return set()
    rows = await session.scalars(
        select(Binding.account_id)
        .where(
            or_(
                Binding.group_id == group.id,
                and_(
                    Binding.group_id.is_(None),
                    Binding.group_name_key == group.display_name_key,
                ),
            )
        )
        .distinct()
    )
    return set(rows)


async def group_members(session: AsyncSession, group_id: str) -> list[str]:
    """The user ids in a group."""
    return list(
        await session.scalars(select(GroupMember.user_id).where(GroupMember.group_id == group_id))
    )


async def candidates_for_binding(session: AsyncSession, binding_id: int) -> dict[int, set[str]]:
    """account id → members of the binding's group (by id or displayName).

    Empty for an unknown binding and for a token-claim binding (SCIM knows no members).
    """
    binding = await session.get(Binding, binding_id)
    if binding is None:
        return {}
    if binding.group_id is not None:
        query = select(GroupMember.user_id).where(GroupMember.group_id == binding.group_id)
    elif binding.group_name_key is not None:
        query = (
            select(GroupMember.user_id)
            .join(Group, Group.id == GroupMember.group_id)
            .where(Group.display_name_key == binding.group_name_key)
        )
    else:
        return {}
    members = set(await session.scalars(query))
    return {binding.account_id: members} if members else {}


async def accounts_with_live_keys(
    session: AsyncSession, user_id: str, *, now: int | None = None
) -> set[int]:
    """Accounts where ``user_id`` holds an issued key that is neither revoked nor expired."""
    when = int(time.time()) if now is None else now
    rows = await session.scalars(
        select(IssuedUserKey.account_id)
        .where(IssuedUserKey.user_id == user_id, _live(when))
        .distinct()
    )
    return set(rows)


async def revoke_binding_members(
    session: AsyncSession,
    sealer: Sealer,
    settings: Settings,
    binding_id: int,
    *,
    actor: Actor,
    reason: str,
    now: int | None = None,
) -> tuple[set[int], int]:
    """Revoke the members who lose the account with this binding (being deleted or ended).

    Returns the ids of the accounts re-signed and how many members were considered.
    """
    candidates = await candidates_for_binding(session, binding_id)
    binding = await session.get(Binding, binding_id)
    on_claim = (
        {binding.account_id: [binding_id]}
        if binding is not None and binding.claim_name is not None
        else None
    )
    resigned = await revoke_lost_access(
        session,
        sealer,
        settings,
        candidates,
        actor=actor,
        reason=reason,
        exclude_bindings={binding_id},
        claim_bindings=on_claim,
        now=now,
    )
    return resigned, sum(len(users) for users in candidates.values())
