"""Roles and bindings: create, change, remove, each with what it means on NATS.

A role edit recompiles the scoped keys that serve it and re-signs each account using them
once; nats-server then closes the connections signed by a changed key and the clients
reconnect under the new template. Removing a binding (or ending it) revokes the members who
lose the account by it. The caller owns the transaction.
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
from resolver.policy.document import BindingSpec
from resolver.policy.plan import name_key
from resolver.policy.revoking import candidates_for_binding, resign_accounts, revoke_lost_access
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
    session: AsyncSession, name: str, body: dict[str, Any], *, actor: Actor
) -> Role:
    """A new role from its human-readable body (``parse_role`` checks every field)."""
    spec = parse_role(check_role_name(name), body)
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

    Returns the role and the ids of the accounts re-signed (none when nothing changed).
    """
    role = await get_role(session, name)
    spec = parse_role(name, body)
    if parse_role(name, role.spec) == spec:
        return role, set()
    before = role.spec
    role.spec = spec.to_dict()
    role.description = spec.description or None
    role.updated_at = utcnow()
    await session.flush()
    resigned = await resign_accounts(
        session, sealer, settings, await refresh_templates(session, name)
    )
    record(
        session,
        actor,
        "policy.role.update",
        name,
        {"before": before, "after": role.spec, "accounts_resigned": len(resigned)},
    )
    return role, resigned


async def delete_role(session: AsyncSession, name: str, *, actor: Actor) -> None:
    """Remove a role no binding uses (remove or rebind those first: that revokes)."""
    role = await get_role(session, name)
    users = list(await session.scalars(select(Binding.id).where(Binding.role_id == role.id)))
    if users:
        raise ConflictError(
            f"role {name!r} is used by binding(s) {', '.join(map(str, users))}: delete them first"
        )
    await session.delete(role)
    await session.flush()
    # Scoped keys serving a role set with this role can no longer be rebuilt: retire them.
    await refresh_templates(session, name)
    record(session, actor, "policy.role.delete", name)


def role_spec(role: Role) -> RoleSpec:
    return parse_role(role.name, role.spec)


# --------------------------------------------------------------------------- bindings


async def create_binding(
    session: AsyncSession, spec: BindingSpec, *, actor: Actor, now: datetime | None = None
) -> Binding:
    """Bind a group (by SCIM id or displayName) or a token claim to an account and a role."""
    account = await get_account(session, spec.account)
    if not is_managed_here(account) or account.is_system:
        raise ConflictError(f"account {account.name!r} cannot take bindings (system or nsc)")
    role = await get_role(session, spec.role)
    if spec.until is not None and spec.until <= (now or utcnow()):
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
    )
    return binding


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
    query = select(Binding).order_by(Binding.id)
    if account is not None:
        query = query.where(Binding.account_id == (await get_account(session, account)).id)
    if role is not None:
        query = query.where(Binding.role_id == (await get_role(session, role)).id)
    if group is not None:
        query = query.where(
            (Binding.group_id == group) | (Binding.group_name_key == name_key(group))
        )
    return list(await session.scalars(query))


async def remove_binding(
    session: AsyncSession,
    sealer: Sealer,
    settings: Settings,
    binding: Binding,
    *,
    actor: Actor,
    reason: str = "binding removed",
) -> set[int]:
    """Delete a binding, revoking the members who lose the account by it."""
    candidates = await candidates_for_binding(session, binding)
    resigned = await revoke_lost_access(
        session,
        sealer,
        settings,
        candidates,
        actor=actor,
        reason=f"{reason} ({binding.id})",
        exclude_bindings={binding.id},
    )
    record(session, actor, "policy.binding.delete", str(binding.id), {"reason": reason})
    await session.delete(binding)
    await session.flush()
    return resigned


async def set_binding_end(
    session: AsyncSession,
    sealer: Sealer,
    settings: Settings,
    binding: Binding,
    ends_at: datetime | None,
    *,
    actor: Actor,
) -> set[int]:
    """Move a binding's end time; an end in the past revokes at once, like a removal."""
    binding.ends_at = ends_at
    await session.flush()
    record(
        session,
        actor,
        "policy.binding.update",
        str(binding.id),
        {"ends_at": ends_at.isoformat() if ends_at else None},
    )
    if ends_at is not None and ends_at <= utcnow():
        return await revoke_lost_access(
            session,
            sealer,
            settings,
            await candidates_for_binding(session, binding),
            actor=actor,
            reason=f"binding {binding.id} ended",
            exclude_bindings={binding.id},
        )
    return set()


async def binding_json(session: AsyncSession, binding: Binding) -> dict[str, Any]:
    """What the admin API shows of a binding."""
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
