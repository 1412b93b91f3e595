"""Explain: may this person publish or subscribe to that subject in that account, and why.

Answers with the group, the binding, the role and the rule, in a sentence a person can read;
the verdict comes from ``decide``, which tests check against a real nats-server.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from resolver.accounts.service import get_account
from resolver.policy.access import user_grants
from resolver.policy.decide import Identity, decide
from resolver.policy.scoped_keys import load_roles
from resolver.policy.user_creds import find_user, group_tag


async def explain(
    session: AsyncSession, user_ref: str, account_ref: str, subject: str, op: str
) -> dict[str, Any]:
    """The verdict and its reasons, as the admin API returns them."""
    user = await find_user(session, user_ref)
    account = await get_account(session, account_ref)
    verb = {"pub": "publish to", "sub": "subscribe to"}.get(op, op)
    answer: dict[str, Any] = {
        "user": user.user_name,
        "account": account.name,
        "subject": subject,
        "op": op,
        "roles": [],
        "grants": [],
        "rule": None,
    }
    if not user.active:
        return {
            **answer,
            "allowed": False,
            "explanation": f"denied: {user.user_name} is inactive in the identity provider",
        }
    grants = [g for g in await user_grants(session, user.id) if g.account_id == account.id]
    if not grants:
        return {
            **answer,
            "allowed": False,
            "explanation": (
                f"denied: {user.user_name} has no binding to account {account.name} "
                "(none of their groups is bound to it)"
            ),
        }
    roles = await load_roles(session, {g.role for g in grants})
    who = Identity(
        name=user.user_name,
        tags=[group_tag(g.group_name) for g in grants],
        account_name=account.name,
        account_key=account.public_key,
        account_tags=(account.spec or {}).get("tags", []),
    )
    decision = decide(roles, who, subject, op)
    granted_by = [g for g in grants if g.role == decision.role]
    via = ""
    if granted_by:
        first = granted_by[0]
        via = f" (group {first.group_name!r}, binding {first.binding_id}, gives role {first.role})"
    kind = "allow" if decision.allowed else ("deny" if decision.rule else "default")
    if decision.allowed:
        sentence = f"{user.user_name} may {verb} {subject}: {decision.reason}{via}"
    else:
        sentence = f"{user.user_name} may not {verb} {subject}: {decision.reason}{via}"
    return {
        **answer,
        "allowed": decision.allowed,
        "explanation": sentence,
        "roles": sorted(r.name for r in roles),
        "grants": [
            {
                "group": g.group_name,
                "group_id": g.group_id,
                "binding_id": g.binding_id,
                "role": g.role,
            }
            for g in grants
        ],
        "rule": (
            {"role": decision.role, "kind": kind, "pattern": decision.rule}
            if decision.rule
            else {"role": None, "kind": kind, "pattern": None}
        ),
    }
