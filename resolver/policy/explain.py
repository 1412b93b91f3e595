"""Explain: may this person publish or subscribe to that subject in that account, and why.

Answers with the group, the binding, the role and the rule, in a sentence a person can read;
the verdict comes from ``decide``, which tests check against a real nats-server.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from resolver.accounts.service import get_account
from resolver.errors import ValidationError
from resolver.policy.access import Grant, user_grants
from resolver.policy.decide import Decision, Identity, decide, expand
from resolver.policy.jetstream import expand_grant
from resolver.policy.roles import INBOX, RoleSpec
from resolver.policy.scoped_keys import load_roles
from resolver.policy.subjects import subject_matches, validate_subject
from resolver.policy.user_creds import find_user, group_tag

VERBS = {"pub": "publish to", "sub": "subscribe to"}
#: What ``decide`` names as the role when the inbox rule (not a role) allowed a subscribe.
_ANY_PUBLISHER = "(any publisher)"


def check_question(subject: str, op: str) -> None:
    """``ValidationError`` unless ``op`` is pub/sub and ``subject`` a literal NATS subject.

    Checked before anything is looked up, so bad input is a 400 whatever the user's state.
    """
    if op not in VERBS:
        raise ValidationError("op must be pub or sub")
    validate_subject(subject, templates=False)
    tokens = subject.split(".")
    if "*" in tokens or ">" in tokens:
        raise ValidationError("explain takes a literal subject (no wildcards)")


def _via(grants: Sequence[Grant], role: str | None) -> str:
    """``group 'eng' (binding 7)``, for every grant of ``role``."""
    return " and ".join(
        f"group {g.group_name!r} (binding {g.binding_id})" for g in grants if g.role == role
    )


def _pattern(rule: str, who: Identity, subject: str) -> str:
    """The rule as written, and what its templates became for this user when it has any."""
    if "{{" not in rule:
        return repr(rule)
    concrete = [p for p in expand(rule, who) if subject_matches(p, subject)]
    return f"{rule!r} (for {who.name}: {concrete[0]!r})" if concrete else repr(rule)


def _origin(role: RoleSpec | None, rule: str) -> str:
    """Where a publish allow comes from when the role does not list it itself."""
    if role is None or rule in role.pub_allow:
        return ""
    if rule == "$JS.API.INFO" or any(rule in expand_grant(g) for g in role.jetstream):
        return " (from its JetStream grants)"
    return ""


def _sentence(
    decision: Decision,
    roles: Sequence[RoleSpec],
    grants: Sequence[Grant],
    who: Identity,
    subject: str,
    op: str,
) -> str:
    name, verb = who.name, VERBS[op]
    kind = "publish" if op == "pub" else "subscribe"
    by_name = {r.name: r for r in roles}
    if decision.allowed and decision.role == _ANY_PUBLISHER:
        # The inbox is not in any role: whoever may publish also gets replies (roles.py).
        publishers = sorted(r.name for r in roles if r.pub_allow or r.jetstream)
        return (
            f"{name} may {verb} {subject}: whoever may publish may receive replies on "
            f"{INBOX!r}, and role {publishers[0]!r} lets {name} publish "
            f"(via {_via(grants, publishers[0])})"
        )
    if decision.allowed:
        rule = decision.rule or ""
        return (
            f"{name} may {verb} {subject}: {_via(grants, decision.role)} gives role "
            f"{decision.role!r}, whose {kind} allow {_pattern(rule, who, subject)}"
            f"{_origin(by_name.get(decision.role or ''), rule)} matches"
        )
    if decision.rule is not None:
        return (
            f"{name} may not {verb} {subject}: denied by the {kind} deny "
            f"{_pattern(decision.rule, who, subject)} of role {decision.role!r}, which "
            f"{_via(grants, decision.role)} gives (a deny wins over every allow)"
        )
    held = ", ".join(repr(r.name) for r in roles)
    if op == "pub":
        allows_some = any(r.pub_allow or r.jetstream for r in roles)
    else:
        allows_some = any(r.sub_allow or r.pub_allow or r.jetstream for r in roles)
    if not allows_some:
        return (
            f"{name} may not {verb} {subject}: denied, none of their roles ({held}) "
            f"lets them {verb} anything"
        )
    return f"{name} may not {verb} {subject}: denied, no role allows it (roles held: {held})"


async def explain(
    session: AsyncSession, user_ref: str, account_ref: str, subject: str, op: str
) -> dict[str, Any]:
    """The verdict and its reasons, as the admin API returns them.

    ``ValidationError`` for a bad op or subject, ``NotFoundError`` for an unknown user or
    account; otherwise an answer, also for inactive users and users without a binding.
    """
    check_question(subject, op)
    user = await find_user(session, user_ref)
    account = await get_account(session, account_ref)
    verb = VERBS[op]
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
            "explanation": (
                f"{user.user_name} may not {verb} {subject}: denied, {user.user_name} is "
                "inactive in the identity provider"
            ),
        }
    grants = [g for g in await user_grants(session, user.id) if g.account_id == account.id]
    if not grants:
        return {
            **answer,
            "allowed": False,
            "explanation": (
                f"{user.user_name} may not {verb} {subject}: denied, {user.user_name} has no "
                f"binding to account {account.name} (none of their groups is bound to it)"
            ),
        }
    roles = await load_roles(session, {g.role for g in grants})
    # What nats-server expands templates from: the person JWT's name and tags (user_creds),
    # and the account's. The user key is not known here (a person may hold several), so
    # {{subject()}} matches nothing in an explanation.
    who = Identity(
        name=user.user_name,
        tags=[group_tag(g.group_name) for g in grants],
        account_name=account.name,
        account_key=account.public_key,
        account_tags=(account.spec or {}).get("tags", []),
    )
    decision = decide(roles, who, subject, op)
    kind = "allow" if decision.allowed else ("deny" if decision.rule else "default")
    return {
        **answer,
        "allowed": decision.allowed,
        "explanation": _sentence(decision, roles, grants, who, subject, op),
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
        "rule": {"role": decision.role, "kind": kind, "pattern": decision.rule},
    }
