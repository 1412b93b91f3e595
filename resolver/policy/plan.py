"""Policy as code: the difference between a policy file and the stored state, as a plan.

Roles and bindings are fully declarative (absent from the file means removed). Accounts are
created and updated from the file but removed only when asked (``prune_accounts``), because
removing an account locks every user of it out. The plan is computed before anything changes,
so ``--dry-run`` prints exactly what ``apply`` would do, and applying a file twice plans
nothing the second time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from resolver.db.models import (
    Account,
    AccountSigningKey,
    AuthCalloutKeys,
    Binding,
    Group,
    Role,
    utcnow,
)
from resolver.errors import ConflictError, ValidationError
from resolver.policy.document import BindingSpec, PolicyDocument
from resolver.policy.roles import RoleSpec, compile_template, parse_role


def name_key(value: str) -> str:
    """The case-folded form group names are matched by (SCIM displayName is unique so)."""
    return value.casefold()


@dataclass(frozen=True)
class Change:
    action: str  # create | update | remove
    kind: str  # account | role | binding
    name: str
    detail: str = ""

    def __str__(self) -> str:
        sign = {"create": "+", "update": "~", "remove": "-"}[self.action]
        return f"{sign} {self.kind} {self.name}" + (f": {self.detail}" if self.detail else "")


@dataclass
class PolicyPlan:
    changes: list[Change] = field(default_factory=list)
    #: Accounts whose JWT the apply re-signs (and pushes).
    resign: set[str] = field(default_factory=set)
    #: Accounts re-signed only if members lose access there (a removed or ended binding
    #: revokes the keys of members who reach the account no other way, if they hold any).
    may_resign: set[str] = field(default_factory=set)

    @property
    def empty(self) -> bool:
        return not self.changes

    def render(self) -> str:
        if self.empty:
            return "No changes: the stored state matches the policy file."
        lines = [str(change) for change in self.changes]
        if self.resign:
            lines.append(f"account JWTs to re-sign: {', '.join(sorted(self.resign))}")
        maybe = self.may_resign - self.resign
        if maybe:
            lines.append(
                "account JWTs re-signed if members lose access (revocations): "
                + ", ".join(sorted(maybe))
            )
        counts = {
            a: sum(c.action == a for c in self.changes) for a in ("create", "update", "remove")
        }
        lines.append(
            f"{counts['create']} to create, {counts['update']} to change, "
            f"{counts['remove']} to remove"
        )
        return "\n".join(lines)


@dataclass(frozen=True)
class StoredBinding:
    id: int
    spec: BindingSpec


async def stored_bindings(session: AsyncSession) -> list[StoredBinding]:
    rows = await session.execute(
        select(Binding, Account.name, Role.name, Group.display_name)
        .join(Account, Account.id == Binding.account_id)
        .join(Role, Role.id == Binding.role_id)
        .outerjoin(Group, Group.id == Binding.group_id)
        .where(Account.deleted_at.is_(None))
        .order_by(Binding.id)
    )
    result = []
    for binding, account, role, _group_display_name in rows:
        claim = None
        if binding.claim_name is not None and binding.claim_value is not None:
            claim = (binding.claim_name, binding.claim_value)
        spec = BindingSpec(
            account=account,
            role=role,
            group=binding.group_name,
            # A binding made by SCIM id is shown with the group's current name beside it.
            group_id=binding.group_id,
            claim=claim,
            until=binding.ends_at,
        )
        result.append(StoredBinding(binding.id, spec))
    return result


def binding_identity(spec: BindingSpec) -> tuple[Any, ...]:
    """What makes two bindings the same grant (``until`` is a changeable property of it)."""
    group = name_key(spec.group) if spec.group is not None else None
    return (group, spec.group_id, spec.claim, spec.account, spec.role)


async def current_state(
    session: AsyncSession,
) -> tuple[dict[str, dict[str, Any]], dict[str, RoleSpec], list[StoredBinding]]:
    accounts = {
        a.name: a.spec or {}
        for a in await session.scalars(
            select(Account).where(
                Account.deleted_at.is_(None),
                Account.is_system.is_(False),
                Account.seed_sealed.is_not(None),
                # The auth callout's account is init's (its authorization section is what
                # the server relies on): a policy file neither changes nor prunes it.
                ~exists().where(AuthCalloutKeys.account_id == Account.id),
            )
        )
    }
    roles = {r.name: parse_role(r.name, r.spec) for r in await session.scalars(select(Role))}
    return accounts, roles, await stored_bindings(session)


async def accounts_using_roles(session: AsyncSession, role_names: set[str]) -> set[str]:
    """Live accounts with a scoped key whose role set contains one of ``role_names``."""
    if not role_names:
        return set()
    rows = await session.execute(
        select(Account.name, AccountSigningKey.role_set)
        .join(Account, Account.id == AccountSigningKey.account_id)
        .where(
            AccountSigningKey.role_set.is_not(None),
            AccountSigningKey.retired_at.is_(None),
            Account.deleted_at.is_(None),
        )
    )
    return {name for name, role_set in rows if role_names & set(role_set.split(","))}


async def accounts_with_new_templates(
    session: AsyncSession, roles_after: dict[str, RoleSpec], touched: set[str]
) -> set[str]:
    """Live accounts whose scoped keys change when the roles become ``roles_after``.

    Only keys serving a ``touched`` role are looked at, exactly as ``refresh_templates``
    does on apply: a key whose role set loses a role is retired, and a key whose compiled
    template differs is rewritten. A role edit no template carries (a description, a
    ``max_ttl``) re-signs nothing.
    """
    if not touched:
        return set()
    rows = await session.execute(
        select(Account.name, AccountSigningKey.role_set, AccountSigningKey.template)
        .join(Account, Account.id == AccountSigningKey.account_id)
        .where(
            AccountSigningKey.role_set.is_not(None),
            AccountSigningKey.retired_at.is_(None),
            Account.deleted_at.is_(None),
        )
    )
    changed: set[str] = set()
    for name, role_set, template in rows:
        names = (role_set or "").split(",")
        if not touched & set(names):
            continue
        if any(role not in roles_after for role in names):
            changed.add(name)
        elif compile_template([roles_after[role] for role in names]) != template:
            changed.add(name)
    return changed


async def _check_accounts(
    session: AsyncSession,
    doc: PolicyDocument,
    managed: dict[str, dict[str, Any]],
    *,
    prune_accounts: bool,
) -> None:
    """Refuse, before anything is planned, what the apply could only fail on half-way."""
    if prune_accounts and not doc.accounts:
        raise ValidationError(
            "--prune-accounts with a policy file that declares no accounts would delete "
            "every account: declare the accounts to keep under accounts"
        )
    declared = sorted(set(doc.accounts) - set(managed))
    if declared:
        rows = await session.execute(
            select(Account, AuthCalloutKeys.id)
            .outerjoin(AuthCalloutKeys, AuthCalloutKeys.account_id == Account.id)
            .where(Account.name.in_(declared), Account.deleted_at.is_(None))
        )
        for account, callout in rows:
            if account.is_system:
                what = "the system account"
            elif callout is not None:
                what = "the auth callout's account (nats-iam-resolver init --auth-callout)"
            else:
                what = "managed elsewhere (nsc)"
            raise ConflictError(f"accounts.{account.name}: {what}; a policy file cannot declare it")
    for i, binding in enumerate(doc.bindings):
        if binding.account not in doc.accounts and binding.account not in managed:
            raise ValidationError(
                f"bindings[{i}].account: {binding.account!r} is not an account this service "
                "manages: declare it under accounts"
            )


async def plan_policy(
    session: AsyncSession,
    doc: PolicyDocument,
    *,
    prune_accounts: bool = False,
    now: datetime | None = None,
) -> PolicyPlan:
    """What applying ``doc`` would change; reads only.

    Raises ``ValidationError``/``ConflictError`` for a file the apply could not carry out
    (an account it names that is the system account or nsc-managed, a binding to an
    account neither declared nor stored, ``prune_accounts`` with no account declared).
    """
    accounts, roles, bindings = await current_state(session)
    await _check_accounts(session, doc, accounts, prune_accounts=prune_accounts)
    plan = PolicyPlan()
    when = now or utcnow()

    for name, spec in sorted(doc.accounts.items()):
        if name not in accounts:
            plan.changes.append(Change("create", "account", name))
            plan.resign.add(name)
        elif spec != accounts[name]:
            changed = sorted(
                k for k in set(spec) | set(accounts[name]) if spec.get(k) != accounts[name].get(k)
            )
            plan.changes.append(Change("update", "account", name, ", ".join(changed)))
            plan.resign.add(name)
    if prune_accounts:
        for name in sorted(set(accounts) - set(doc.accounts)):
            plan.changes.append(Change("remove", "account", name, "locks every user out"))
            plan.resign.add(name)  # the lock-out: a last JWT allowing no connection

    edited: set[str] = set()
    for name, role in sorted(doc.roles.items()):
        if name not in roles:
            plan.changes.append(Change("create", "role", name))
        elif role != roles[name]:
            plan.changes.append(Change("update", "role", name))
            edited.add(name)
    for name in sorted(set(roles) - set(doc.roles)):
        plan.changes.append(Change("remove", "role", name))
        edited.add(name)
    plan.resign |= await accounts_with_new_templates(session, doc.roles, edited)

    wanted = {binding_identity(b): b for b in doc.bindings}
    have = {binding_identity(b.spec): b for b in bindings}
    for identity, spec in wanted.items():
        label = f"{spec.selector} -> {spec.account}/{spec.role}"
        ended = spec.until is not None and spec.until <= when
        if identity not in have:
            detail = f"already ended {spec.until}" if ended else ""
            plan.changes.append(Change("create", "binding", label, detail))
        elif have[identity].spec.until != spec.until:
            plan.changes.append(Change("update", "binding", label, f"until {spec.until}"))
            if ended:
                # Ended now: its members are revoked like on a removal.
                plan.may_resign.add(spec.account)
    for identity, stored in have.items():
        if identity not in wanted:
            spec = stored.spec
            plan.changes.append(
                Change("remove", "binding", f"{spec.selector} -> {spec.account}/{spec.role}")
            )
            # Members who lose the account through this binding are revoked: a re-sign.
            plan.may_resign.add(spec.account)
    return plan


async def export_policy(session: AsyncSession) -> PolicyDocument:
    """The stored accounts, roles and bindings as a policy document (``policy export``)."""
    accounts, roles, bindings = await current_state(session)
    return PolicyDocument(
        accounts=dict(sorted(accounts.items())),
        roles=dict(sorted(roles.items())),
        bindings=tuple(b.spec for b in bindings),
    )
