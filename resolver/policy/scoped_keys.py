"""Scoped signing keys, one per (account, role set), whose templates are the compiled roles.

Permissions live in the account JWT: a role edit recompiles the templates of every key whose
set contains the role and re-signs those accounts once, and nats-server closes the live
connections signed by a changed key (DESIGN.md §2), so clients reconnect with the new rules.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from resolver.db.models import Account, AccountSigningKey, Role, utcnow
from resolver.errors import NotFoundError
from resolver.natsjwt import new_keypair
from resolver.policy.roles import RoleSpec, compile_template, parse_role, role_set_name
from resolver.sealing import Sealer

# Built once (credentials are issued through both on the hot path).
_ROLES = select(Role).where(Role.name.in_(bindparam("names", expanding=True)))
_SCOPED_KEY = select(AccountSigningKey).where(
    AccountSigningKey.account_id == bindparam("account_id"),
    AccountSigningKey.role_set == bindparam("role_set"),
    # A rotated key signs no new user JWT (it only stays listed for the ones it signed).
    AccountSigningKey.superseded_at.is_(None),
    AccountSigningKey.retired_at.is_(None),
)


async def load_roles(session: AsyncSession, names: Iterable[str]) -> list[RoleSpec]:
    """The named roles as ``RoleSpec``s; ``NotFoundError`` naming any that do not exist."""
    wanted = sorted(set(names))
    rows = {r.name: r for r in await session.scalars(_ROLES, {"names": wanted})}
    missing = [name for name in wanted if name not in rows]
    if missing:
        raise NotFoundError(f"no role named {', '.join(missing)}")
    return [parse_role(name, rows[name].spec) for name in wanted]


async def scoped_key_for(
    session: AsyncSession,
    sealer: Sealer,
    account: Account,
    role_names: Iterable[str],
    *,
    roles: list[RoleSpec] | None = None,
) -> tuple[AccountSigningKey, bool]:
    """The account's scoped key for this role set, created when first needed.

    ``roles``: the set's ``RoleSpec``s when the caller loaded them already. Returns (key,
    created). A created key is not in the served account JWT yet: the caller must re-sign
    and push the account before handing out a user JWT signed by it.
    """
    if roles is None:
        roles = await load_roles(session, role_names)
    name = role_set_name(roles)
    key = await session.scalar(_SCOPED_KEY, {"account_id": account.id, "role_set": name})
    if key is not None:
        return key, False
    public, seed = new_keypair("account")
    key = AccountSigningKey(
        account_id=account.id,
        public_key=public,
        seed_sealed=sealer.seal(seed),
        role_set=name,
        template=compile_template(roles),
    )
    session.add(key)
    await session.flush()
    return key, True


async def refresh_templates(session: AsyncSession, role_name: str | None = None) -> set[int]:
    """Recompile scoped-key templates (those containing ``role_name``, or all).

    A key whose role set lost a role (deleted) is retired, which removes it from the account
    JWT and so disconnects the users it signed. Returns the ids of accounts to re-sign.
    """
    keys = await session.scalars(
        select(AccountSigningKey).where(
            AccountSigningKey.role_set.is_not(None), AccountSigningKey.retired_at.is_(None)
        )
    )
    existing = set(await session.scalars(select(Role.name)))
    changed: set[int] = set()
    for key in keys:
        names = (key.role_set or "").split(",")
        if role_name is not None and role_name not in names:
            continue
        if not set(names) <= existing:
            key.retired_at = utcnow()
            changed.add(key.account_id)
            continue
        template = compile_template(await load_roles(session, names))
        if template != key.template:
            key.template = template
            changed.add(key.account_id)
    return changed
