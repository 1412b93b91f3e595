"""Roles and bindings: create, change, remove, each with what it means on NATS.

A role edit recompiles the scoped keys that serve it and re-signs each account using them
once; nats-server then closes the connections signed by a changed key and the clients
reconnect under the new template. Removing a binding (or ending it) revokes the members who
lose the account by it. The caller owns the transaction.

The ``store_*``/``drop_*`` functions change one row and write its audit entry but neither
re-sign nor revoke: ``policy apply`` (``resolver.policy.apply``) makes many changes and then
revokes and re-signs each affected account once. The other functions are one complete
change each, as the admin API and the CLI make them.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from resolver.accounts.service import get_account, is_managed_here
from resolver.audit.service import Actor, record
from resolver.config import Settings
from resolver.db.models import Account, Binding, Group, Role, utcnow
from resolver.errors import ConflictError, NotFoundError, ValidationError
from resolver.policy.deprovision import resign_accounts, revoke_binding_members
from resolver.policy.document import BindingSpec
from resolver.policy.plan import accounts_using_roles, name_key
from resolver.policy.roles import RoleSpec, parse_role
from resolver.policy.scoped_keys import refresh_templates
from resolver.sealing import Sealer

_ROLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


# ------------------------------------------------------------------------------ roles


def check_role_name(name: object) -> str:
    if not isinstance(name, str) or not _ROLE_NAME.match(name):
        raise ValidationError(
            "role name must be 1-100 letters, digits or ._- starting with a letter or digit"
        )
    return name


async def get_role(session: AsyncSession, name: str) -> Role:
    role = await session.scalar(select(Role).where(Role.name == name))
    if role is None:
        raise NotFoundError(f"no role named {name!r}")
    return role


async def list_roles(session: AsyncSession) -> list[Role]:
    return list(await session.scalars(select(Role).order_by(Role.name)))


async def create_role(
    session: AsyncSession, name: str, body: dict[str, Any] | RoleSpec, *, actor: Actor
) -> Role:
    """A new role from its human-readable body (``parse_role`` checks every field).

    A new role re-signs nothing: no scoped key serves it until credentials are issued.
    """
    check_role_name(name)
    spec = body if isinstance(body, RoleSpec) else parse_role(name, body)
    if await session.scalar(select(Role.id).where(Role.name == name)) is not None:
        raise ConflictError(f"a role named {name!r} already exists")
    role = Role(name=name, description=spec.description or None, spec=spec.to_dict())
    session.add(role)
    try:
        await session.flush()
    except IntegrityError:
        raise ConflictError(f"a role named {name!r} already exists") from None
    record(session, actor, "policy.role.create", name, {"spec": role.spec})
    return role


async def store_role_spec(
    session: AsyncSession, role: Role, spec: RoleSpec, *, actor: Actor
) -> bool:
    """Replace ``role``'s spec and audit it; False (nothing written) when it is the same.

    Neither recompiles nor re-signs: the caller runs ``refresh_templates`` and re-signs.
    """
    if role_spec(role) == spec:
        return False
    before = role.spec
    role.spec = spec.to_dict()
    role.description = spec.description or None
    role.updated_at = utcnow()
    await session.flush()
    record(session, actor, "policy.role.update", role.name, {"before": before, "after": role.spec})
    return True


async def replace_role(
    session: AsyncSession,
    sealer: Sealer,
    settings: Settings,
    name: str,
    body: dict[str, Any],
    *,
    actor: Actor,
) -> tuple[Role, set[int]]:
    """Replace a role's spec; recompile its scoped keys and re-sign their accounts once.

    Returns the role and the ids of the accounts re-signed (none when nothing changed, or
    when the change does not reach any template, like a new description or ``max_ttl``).
    """
    role = await get_role(session, name)
    if not await store_role_spec(session, role, parse_role(name, body), actor=actor):
        return role, set()
    resigned = await resign_accounts(
        session, sealer, settings, await refresh_templates(session, name)
    )
    if resigned:
        record(
            session,
            actor,
            "policy.role.resign",
            name,
            {"accounts": await account_names(session, resigned)},
        )
    return role, resigned


async def drop_role(session: AsyncSession, role: Role, *, actor: Actor) -> set[int]:
    """Delete a role no binding uses; the ids of accounts whose scoped keys it retired.

    Those accounts must be re-signed by the caller (the retired keys leave their JWTs).
    """
    users = list(await session.scalars(select(Binding.id).where(Binding.role_id == role.id)))
    if users:
        raise ConflictError(
            f"role {role.name!r} is used by binding(s) {', '.join(map(str, users))}: "
            "delete them first"
        )
    name = role.name
    await session.delete(role)
    await session.flush()
    # Scoped keys serving a role set with this role can no longer be rebuilt: retire them.
    retired = await refresh_templates(session, name)
    record(session, actor, "policy.role.delete", name)
    return retired


async def delete_role(
    session: AsyncSession, sealer: Sealer, settings: Settings, name: str, *, actor: Actor
) -> set[int]:
    """Remove a role no binding uses (remove or rebind those first: that revokes).

    Accounts that still carried a scoped key for a role set with this role are re-signed
    without it; the ids re-signed.
    """
    return await resign_accounts(
        session,
        sealer,
        settings,
        await drop_role(session, await get_role(session, name), actor=actor),
    )


async def account_names(session: AsyncSession, ids: set[int]) -> list[str]:
    """Account names for ids (audit rows and messages name accounts, not row ids)."""
    if not ids:
        return []
    return sorted(await session.scalars(select(Account.name).where(Account.id.in_(sorted(ids)))))


async def accounts_using_role(session: AsyncSession, role: Role) -> list[str]:
    """Live accounts a binding grants ``role`` in, or whose JWT carries a key serving it."""
    bound = set(
        await session.scalars(
            select(Account.name)
            .join(Binding, Binding.account_id == Account.id)
            .where(Binding.role_id == role.id, Account.deleted_at.is_(None))
        )
    )
    return sorted(bound | await accounts_using_roles(session, {role.name}))


async def role_json(session: AsyncSession, role: Role) -> dict[str, Any]:
    """What the admin API and the CLI show of a role."""
    return {
        "name": role.name,
        "spec": role.spec,
        "accounts": await accounts_using_role(session, role),
        "created_at": role.created_at.isoformat() if role.created_at else None,
        "updated_at": role.updated_at.isoformat() if role.updated_at else None,
    }


def role_spec(role: Role) -> RoleSpec:
    return parse_role(role.name, role.spec)


# --------------------------------------------------------------------------- bindings


async def create_binding(
    session: AsyncSession,
    spec: BindingSpec,
    *,
    actor: Actor,
    now: datetime | None = None,
    allow_ended: bool = False,
) -> Binding:
    """Bind a group (by SCIM id or displayName) or a token claim to an account and a role.

    Granting revokes nothing and re-signs nothing: credentials follow on request.
    ``allow_ended`` lets ``policy apply`` store a declared grant whose end already passed
    (it grants nothing, and the store then mirrors the file); the API refuses one.
    """
    account = await get_account(session, spec.account)
    if account.is_system:
        raise ConflictError("the system account cannot take bindings")
    if not is_managed_here(account):
        raise ConflictError(
            f"account {account.name!r} is managed elsewhere (nsc): it cannot take bindings"
        )
    role = await get_role(session, spec.role)
    if spec.until is not None:
        if spec.until.tzinfo is None:
            raise ValidationError("ends_at needs a time zone (e.g. a trailing Z for UTC)")
        if not allow_ended and spec.until <= (now or utcnow()):
            raise ValidationError("ends_at must be in the future")
    if spec.group_id is not None and await session.get(Group, spec.group_id) is None:
        raise NotFoundError(f"no group with id {spec.group_id!r}")
    binding = Binding(
        account_id=account.id,
        role_id=role.id,
        group_id=spec.group_id,
        group_name=spec.group,
        group_name_key=name_key(spec.group) if spec.group is not None else None,
        claim_name=spec.claim[0] if spec.claim else None,
        claim_value=spec.claim[1] if spec.claim else None,
        ends_at=spec.until,
    )
    duplicate = await session.scalar(
        select(Binding.id).where(
            Binding.account_id == account.id,
            Binding.role_id == role.id,
            _same(Binding.group_id, binding.group_id),
            _same(Binding.group_name_key, binding.group_name_key),
            _same(Binding.claim_name, binding.claim_name),
            _same(Binding.claim_value, binding.claim_value),
        )
    )
    if duplicate is not None:
        raise ConflictError(f"binding {duplicate} already grants this")
    session.add(binding)
    await session.flush()
    record(
        session,
        actor,
        "policy.binding.create",
        str(binding.id),
        {**spec.to_dict(), "account": account.name},
        account=account.public_key,
    )
    return binding


async def _account_key(session: AsyncSession, account_id: int) -> str | None:
    """The public key of a binding's account, for its audit rows (usually already loaded)."""
    account = await session.get(Account, account_id)
    return account.public_key if account is not None else None


def _same(column: Any, value: Any) -> Any:
    return column.is_(None) if value is None else column == value


async def get_binding(session: AsyncSession, binding_id: int) -> Binding:
    binding = await session.get(Binding, binding_id)
    if binding is None:
        raise NotFoundError(f"no binding {binding_id}")
    return binding


async def list_bindings(
    session: AsyncSession,
    *,
    account: str | None = None,
    role: str | None = None,
    group: str | None = None,
) -> list[Binding]:
    """Bindings of live accounts, optionally of one account, role or group (id or name)."""
    query = (
        select(Binding)
        .join(Account, Account.id == Binding.account_id)
        .where(Account.deleted_at.is_(None))
        .order_by(Binding.id)
    )
    if account is not None:
        query = query.where(Binding.account_id == (await get_account(session, account)).id)
    if role is not None:
        query = query.where(Binding.role_id == (await get_role(session, role)).id)
    if group is not None:
        by_name = select(Group.id).where(Group.display_name_key == name_key(group))
        query = query.where(
            (Binding.group_id == group)
            | (Binding.group_id.in_(by_name))
            | (Binding.group_name_key == name_key(group))
        )
    return list(await session.scalars(query))


async def drop_binding(
    session: AsyncSession, binding: Binding, *, actor: Actor, reason: str = "binding removed"
) -> None:
    """Delete a binding row and audit it; revoking is the caller's (``remove_binding``)."""
    details = {
        "reason": reason,
        "account_id": binding.account_id,
        "role_id": binding.role_id,
        "group_id": binding.group_id,
        "group": binding.group_name,
        "claim": [binding.claim_name, binding.claim_value] if binding.claim_name else None,
    }
    record(
        session,
        actor,
        "policy.binding.delete",
        str(binding.id),
        details,
        account=await _account_key(session, binding.account_id),
    )
    await session.delete(binding)
    await session.flush()


async def remove_binding(
    session: AsyncSession,
    sealer: Sealer,
    settings: Settings,
    binding: Binding,
    *,
    actor: Actor,
    reason: str = "binding removed",
) -> set[int]:
    """Delete a binding, revoking the members who lose the account (or a role) by it.

    Returns the ids of the accounts re-signed (at most the binding's one).
    """
    # The members are read before the row goes; what it granted is excluded from the
    # "do they still reach the account?" check.
    resigned, _ = await revoke_binding_members(
        session, sealer, settings, binding.id, actor=actor, reason=f"{reason} ({binding.id})"
    )
    await drop_binding(session, binding, actor=actor, reason=reason)
    return resigned


async def store_binding_end(
    session: AsyncSession, binding: Binding, ends_at: datetime | None, *, actor: Actor
) -> bool:
    """Set a binding's end time and audit it; False when unchanged. Never revokes."""
    if ends_at is not None and ends_at.tzinfo is None:
        raise ValidationError("ends_at needs a time zone (e.g. a trailing Z for UTC)")
    if binding.ends_at == ends_at:
        return False
    before = binding.ends_at
    binding.ends_at = ends_at
    await session.flush()
    record(
        session,
        actor,
        "policy.binding.update",
        str(binding.id),
        {
            "before": before.isoformat() if before else None,
            "ends_at": ends_at.isoformat() if ends_at else None,
        },
        account=await _account_key(session, binding.account_id),
    )
    return True


async def set_binding_end(
    session: AsyncSession,
    sealer: Sealer,
    settings: Settings,
    binding: Binding,
    ends_at: datetime | None,
    *,
    actor: Actor,
    now: datetime | None = None,
) -> set[int]:
    """Move a binding's end time; an end in the past revokes at once, like a removal.

    Returns the ids of the accounts re-signed.
    """
    if not await store_binding_end(session, binding, ends_at, actor=actor):
        return set()
    when = now or utcnow()
    if ends_at is None or ends_at > when:
        return set()
    resigned, _ = await revoke_binding_members(
        session,
        sealer,
        settings,
        binding.id,
        actor=actor,
        reason=f"binding {binding.id} ended",
        now=int(when.timestamp()),
    )
    # Handled here and now: the end-time job need not handle it again.
    binding.lapsed_at = when
    await session.flush()
    return resigned


async def binding_json(session: AsyncSession, binding: Binding) -> dict[str, Any]:
    """What the admin API and the CLI show of a binding."""
    account = await session.get_one(Account, binding.account_id)
    role = await session.get_one(Role, binding.role_id)
    group_name = binding.group_name
    if binding.group_id is not None:
        group = await session.get(Group, binding.group_id)
        group_name = group.display_name if group is not None else None
    return {
        "id": binding.id,
        "account": account.name,
        "role": role.name,
        "group_id": binding.group_id,
        "group": group_name,
        "claim": (
            {"name": binding.claim_name, "value": binding.claim_value}
            if binding.claim_name is not None
            else None
        ),
        "ends_at": binding.ends_at.isoformat() if binding.ends_at else None,
        "created_at": binding.created_at.isoformat() if binding.created_at else None,
    }
