"""Who reaches which account with which roles: SCIM memberships joined with bindings, in SQL.

A binding names its group by SCIM id or by displayName (so a policy may be applied before
the IdP has pushed the group); both are joined here. Expired bindings (``ends_at`` passed)
grant nothing, exactly as if the member had left the group.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import BindParameter, Select, and_, bindparam, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from resolver.db.models import Account, Binding, Group, GroupMember, Role, User, utcnow

#: Ids per ``IN (...)`` list: far below SQLite's and asyncpg's bound-parameter limits.
IN_CHUNK = 5_000


@dataclass(frozen=True)
class Grant:
    """One reason a user reaches an account: the group, the binding and the role."""

    account_id: int
    account_name: str
    role: str
    binding_id: int
    group_id: str
    group_name: str
    #: The role's stored definition, when the query was asked for it (the credentials path).
    role_spec: dict[str, Any] | None = field(default=None, compare=False)


def _grants_query(
    now: datetime | BindParameter[datetime],
) -> Select[tuple[int, str, str, int, str, str]]:
    return (
        select(
            Binding.account_id,
            Account.name,
            Role.name,
            Binding.id,
            Group.id,
            Group.display_name,
        )
        .join(Role, Role.id == Binding.role_id)
        .join(Account, Account.id == Binding.account_id)
        .join(
            Group,
            or_(
                Group.id == Binding.group_id,
                and_(Binding.group_id.is_(None), Group.display_name_key == Binding.group_name_key),
            ),
        )
        .join(GroupMember, GroupMember.group_id == Group.id)
        .where(
            Account.deleted_at.is_(None),
            or_(Binding.ends_at.is_(None), Binding.ends_at > now),
        )
    )


async def user_grants(
    session: AsyncSession, user_id: str, *, now: datetime | None = None
) -> list[Grant]:
    """Every (account, role) an active user holds through group bindings; [] if inactive."""
    active = await session.scalar(select(User.active).where(User.id == user_id))
    if not active:
        return []
    rows = await session.execute(
        _grants_query(now or utcnow())
        .where(GroupMember.user_id == user_id)
        .order_by(Account.name, Role.name, Binding.id)
    )
    return [Grant(*row) for row in rows]


# Built once: constructing this join costs more CPU than running it, and issuing credentials
# (the hot path) asks it once per batch of requests.
_GRANTS_OF_USERS = (
    _grants_query(bindparam("now"))
    .add_columns(Role.spec, GroupMember.user_id)
    .join(User, User.id == GroupMember.user_id)
    .where(
        GroupMember.user_id.in_(bindparam("user_ids", expanding=True)),
        Binding.account_id.in_(bindparam("account_ids", expanding=True)),
        User.active.is_(True),
    )
    .order_by(Account.name, Role.name, Binding.id)
)


async def grants_of_users(
    conn: AsyncConnection,
    user_ids: Collection[str],
    account_ids: Collection[int],
    *,
    now: datetime | None = None,
) -> dict[str, list[Grant]]:
    """The grants (with each role's spec) active users among ``user_ids`` hold in
    ``account_ids``, by user: one statement per ``IN_CHUNK`` users. The hot path of
    issuing credentials, which decides a batch of requests at once."""
    found: dict[str, list[Grant]] = defaultdict(list)
    ids = sorted(set(user_ids))
    params: dict[str, Any] = {"account_ids": sorted(set(account_ids)), "now": now or utcnow()}
    for start in range(0, len(ids), IN_CHUNK):
        rows = await conn.execute(
            _GRANTS_OF_USERS, {**params, "user_ids": ids[start : start + IN_CHUNK]}
        )
        for *grant, user_id in rows:
            found[user_id].append(Grant(*grant))
    return dict(found)


def role_sets(grants: list[Grant]) -> dict[int, frozenset[str]]:
    """account id → the set of role names the user holds there."""
    sets: dict[int, set[str]] = defaultdict(set)
    for grant in grants:
        sets[grant.account_id].add(grant.role)
    return {account: frozenset(roles) for account, roles in sets.items()}


async def members_reaching(
    session: AsyncSession, account_id: int, user_ids: list[str], *, now: datetime | None = None
) -> set[str]:
    """Which of ``user_ids`` still reach ``account_id`` through any binding (any group).

    The deprovisioning path asks this after a change: a user who lost one group but still
    reaches the account through another must keep access.
    """
    if not user_ids:
        return set()
    rows = await session.scalars(
        _grants_query(now or utcnow())
        .with_only_columns(GroupMember.user_id)
        .join(User, User.id == GroupMember.user_id)
        .where(
            Binding.account_id == account_id,
            User.active.is_(True),
            GroupMember.user_id.in_(user_ids),
        )
        .distinct()
    )
    return set(rows)


async def account_role_sets(
    session: AsyncSession,
    account_id: int,
    user_ids: Collection[str],
    *,
    exclude_bindings: Collection[int] = (),
    exclude_groups: Collection[str] = (),
    now: datetime | None = None,
) -> dict[str, frozenset[str]]:
    """Active users among ``user_ids`` who reach ``account_id``, each with their role set.

    ``exclude_*`` leave out bindings and groups that are about to go: deletions are
    announced before the row is deleted, and what they granted must not count.
    """
    found: dict[str, set[str]] = defaultdict(set)
    ids = list(dict.fromkeys(user_ids))
    for start in range(0, len(ids), IN_CHUNK):
        query = (
            _grants_query(now or utcnow())
            .with_only_columns(GroupMember.user_id, Role.name)
            .join(User, User.id == GroupMember.user_id)
            .where(
                Binding.account_id == account_id,
                User.active.is_(True),
                GroupMember.user_id.in_(ids[start : start + IN_CHUNK]),
            )
        )
        if exclude_bindings:
            query = query.where(Binding.id.not_in(list(exclude_bindings)))
        if exclude_groups:
            query = query.where(Group.id.not_in(list(exclude_groups)))
        for user_id, role in await session.execute(query):
            found[user_id].add(role)
    return {user: frozenset(roles) for user, roles in found.items()}
