"""Policy as code: apply a policy file in the caller's one transaction.

The plan is computed first (``plan_policy``), so what ``--dry-run`` prints is what happens.
Then, in this order:

1. new accounts are created;
2. roles are created and changed: a change recompiles the templates of the scoped keys
   serving the role (their accounts are re-signed later, once);
3. bindings are created, and their ``until`` moved;
4. bindings absent from the file are deleted, then roles absent from the file (the scoped
   keys serving a deleted role are retired); then changed accounts get their new spec
   (stored, not signed yet) and, with ``prune_accounts``, accounts absent from the file
   are deleted (locked out: that is their one, last signature);
5. the members who lost an account (or a role) by those deletions are revoked, all at once,
   which re-signs each account concerned once;
6. every other account whose JWT changed is re-signed, once.

Every account is signed at most once, whatever changed it: a revocation's re-sign carries
the new spec and templates too, and the final pass signs only what it has not.

Nothing commits here: a failure anywhere leaves the stored state as it was.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncSession

from resolver.accounts.service import (
    create_account,
    delete_account,
    get_account,
    is_managed_here,
    store_account_spec,
)
from resolver.audit.service import Actor, record
from resolver.config import Settings
from resolver.db.models import Binding, utcnow
from resolver.policy.deprovision import (
    candidates_for_binding,
    resign_accounts,
    revoke_lost_access,
)
from resolver.policy.document import PolicyDocument
from resolver.policy.manage import (
    create_binding,
    create_role,
    drop_binding,
    drop_role,
    get_role,
    store_binding_end,
    store_role_spec,
)
from resolver.policy.plan import PolicyPlan, binding_identity, plan_policy, stored_bindings
from resolver.policy.scoped_keys import refresh_templates
from resolver.sealing import Sealer

Progress = Callable[[str], None]


async def apply_policy(
    session: AsyncSession,
    sealer: Sealer,
    settings: Settings,
    doc: PolicyDocument,
    *,
    actor: Actor,
    prune_accounts: bool = False,
    progress: Progress | None = None,
) -> PolicyPlan:
    """Make the stored accounts, roles and bindings match ``doc``; returns the plan applied.

    Applying the same document twice changes nothing the second time (no new account JWT,
    no push). The caller owns the transaction and commits.
    """

    def say(line: str) -> None:
        if progress is not None:
            progress(line)

    now = utcnow()
    plan = await plan_policy(session, doc, prune_accounts=prune_accounts, now=now)
    if plan.empty:
        return plan
    counts: dict[str, int] = defaultdict(int)
    #: Accounts whose JWT must be re-signed at the end (by id).
    pending: set[int] = set()

    # 1. New accounts (signed as they are made).
    for change in plan.changes:
        if change.kind == "account" and change.action == "create":
            say(f"creating account {change.name}")
            await create_account(
                session, sealer, settings, name=change.name, spec=doc.accounts[change.name],
                actor=actor,
            )  # fmt: skip
            counts["accounts_created"] += 1

    # 2. Roles: create and change.
    for change in plan.changes:
        if change.kind != "role" or change.action == "remove":
            continue
        name = change.name
        spec = doc.roles[name]
        if change.action == "create":
            say(f"creating role {name}")
            await create_role(session, name, spec, actor=actor)
            counts["roles_created"] += 1
            continue
        say(f"updating role {name}")
        if await store_role_spec(session, await get_role(session, name), spec, actor=actor):
            # Recompiled now, re-signed once at the end (with every other change).
            pending |= await refresh_templates(session, name)
            counts["roles_updated"] += 1

    # 3. Bindings: create, move `until`. Who loses what (a binding ended or removed) is
    # collected and revoked in one pass below, so each account is re-signed once.
    stored = {binding_identity(b.spec): b for b in await stored_bindings(session)}
    wanted_bindings = {binding_identity(b): b for b in doc.bindings}
    resigned: set[int] = set()
    candidates: dict[int, set[str]] = defaultdict(set)
    # Claim bindings going away: SCIM knows no members, the keys issued on them are revoked.
    claim_bindings: dict[int, set[int]] = defaultdict(set)
    for identity, spec in wanted_bindings.items():
        label = f"{spec.selector} -> {spec.account}/{spec.role}"
        have = stored.get(identity)
        if have is None:
            say(f"creating binding {label}")
            # A declared grant whose `until` already passed is stored all the same: it
            # grants nothing, the store mirrors the file, and the next apply is a no-op.
            await create_binding(session, spec, actor=actor, allow_ended=True)
            counts["bindings_created"] += 1
        elif have.spec.until != spec.until:
            say(f"updating binding {have.id} {label}: until {spec.until}")
            binding = await session.get_one(Binding, have.id)
            await store_binding_end(session, binding, spec.until, actor=actor)
            if spec.until is not None and spec.until <= now:
                # Ended: its members are revoked like on a removal (the end-time job then
                # has nothing left to do for it).
                for account_id, users in (
                    await candidates_for_binding(session, binding.id)
                ).items():
                    candidates[account_id] |= users
                if binding.claim_name is not None:
                    claim_bindings[binding.account_id].add(binding.id)
                binding.lapsed_at = now
            counts["bindings_updated"] += 1

    # 4. Bindings, then roles, absent from the file (members read before the rows go).
    for identity, have in stored.items():
        if identity in wanted_bindings:
            continue
        spec = have.spec
        say(f"removing binding {have.id} {spec.selector} -> {spec.account}/{spec.role}")
        binding = await session.get_one(Binding, have.id)
        for account_id, users in (await candidates_for_binding(session, binding.id)).items():
            candidates[account_id] |= users
        if binding.claim_name is not None:
            claim_bindings[binding.account_id].add(binding.id)
        await drop_binding(session, binding, actor=actor, reason="absent from the policy file")
        counts["bindings_removed"] += 1
    await session.flush()
    for change in plan.changes:
        if change.kind == "role" and change.action == "remove":
            say(f"removing role {change.name}")
            # Its scoped keys are retired: those accounts' JWTs change.
            pending |= await drop_role(session, await get_role(session, change.name), actor=actor)
            counts["roles_removed"] += 1

    # Changed accounts: stored now, signed once below with everything else that changed
    # them (a revocation's re-sign or the final one).
    for change in plan.changes:
        if change.kind == "account" and change.action == "update":
            say(f"updating account {change.name}")
            account = await get_account(session, change.name)
            # The file holds the whole spec: a field it leaves out is removed.
            if await store_account_spec(session, account, doc.accounts[change.name], actor=actor):
                pending.add(account.id)
            counts["accounts_updated"] += 1

    # Accounts removed last, once nothing points at them any more.
    deleted: set[int] = set()
    if prune_accounts:
        for change in plan.changes:
            if change.kind == "account" and change.action == "remove":
                account = await get_account(session, change.name)
                if account.is_system or not is_managed_here(account):
                    continue  # never planned; checked again all the same
                say(f"removing account {change.name}")
                await delete_account(session, sealer, settings, account, actor=actor)
                deleted.add(account.id)
                counts["accounts_removed"] += 1

    # 5. Revoke the members who lost an account or a role.
    if candidates or claim_bindings:
        say("revoking the credentials of members who lost access")
        resigned |= await revoke_lost_access(
            session,
            sealer,
            settings,
            candidates,
            actor=actor,
            reason="binding removed or ended by policy apply",
            claim_bindings=claim_bindings,
            now=int(now.timestamp()),
        )

    # 6. Re-sign what is left, each account once.
    left = pending - resigned - deleted
    if left:
        say(f"re-signing {len(left)} account JWT(s)")
        resigned |= await resign_accounts(session, sealer, settings, left)
    counts["accounts_resigned"] = len(resigned)

    totals = {"changes": len(plan.changes), **dict(sorted(counts.items()))}
    record(session, actor, "policy.apply", None, totals)
    say(
        "applied: "
        + ", ".join(
            f"{key.replace('_', ' ').replace('resigned', 're-signed')} {n}"
            for key, n in totals.items()
        )
    )
    return plan
