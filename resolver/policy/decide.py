"""Decide, in words, whether a role set lets a user publish or subscribe to a subject.

This mirrors what nats-server does with the compiled template (``roles.compile_template``):
template functions are expanded for the user, a matching deny always wins, and otherwise
a matching allow is needed. Tests check the verdicts against a real nats-server, so the
explanation an operator reads is the rule the server applies.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from resolver.errors import ValidationError
from resolver.policy.jetstream import expand_grant
from resolver.policy.roles import INBOX, RoleSpec
from resolver.policy.subjects import subject_matches, validate_subject

_TEMPLATE = re.compile(r"\{\{\s*([a-z-]+)\(([^(){}]*)\)\s*\}\}")


@dataclass(frozen=True)
class Identity:
    """What templates expand from: the user JWT's name, key and tags, and the account's."""

    name: str
    user_key: str = ""
    tags: Sequence[str] = ()
    account_name: str = ""
    account_key: str = ""
    account_tags: Sequence[str] = ()


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    role: str | None = None
    rule: str | None = None


def _tag_values(tags: Sequence[str], name: str) -> list[str]:
    prefix = f"{name.lower()}:"
    return [t[len(prefix) :] for t in tags if t.lower().startswith(prefix)]


def expand(pattern: str, who: Identity) -> list[str]:
    """Every concrete pattern a templated subject becomes for ``who`` (none if a tag is
    missing: nats-server then refuses the connection, so nothing is allowed by it)."""
    results = [pattern]
    while any(_TEMPLATE.search(p) for p in results):
        expanded: list[str] = []
        for current in results:
            match = _TEMPLATE.search(current)
            if match is None:
                expanded.append(current)
                continue
            function, argument = match.group(1), match.group(2).strip()
            values = {
                "name": [who.name],
                "subject": [who.user_key],
                "account-name": [who.account_name],
                "account-subject": [who.account_key],
                "tag": _tag_values(who.tags, argument),
                "account-tag": _tag_values(who.account_tags, argument),
            }.get(function, [])
            expanded += [current[: match.start()] + v + current[match.end() :] for v in values]
        results = expanded
    return results


def _rules(
    roles: Iterable[RoleSpec], op: str
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    allows: list[tuple[str, str]] = []
    denies: list[tuple[str, str]] = []
    for role in sorted(roles, key=lambda r: r.name):
        if op == "pub":
            allows += [(role.name, s) for s in role.pub_allow]
            allows += [(role.name, s) for g in role.jetstream for s in expand_grant(g)]
            if role.jetstream:
                allows.append((role.name, "$JS.API.INFO"))
            denies += [(role.name, s) for s in role.pub_deny]
        else:
            allows += [(role.name, s.split(" ")[0]) for s in role.sub_allow]
            denies += [(role.name, s.split(" ")[0]) for s in role.sub_deny]
    if op == "sub" and any(r.pub_allow or r.jetstream for r in roles):
        allows.append(("(any publisher)", INBOX))
    return allows, denies


def decide(roles: Iterable[RoleSpec], who: Identity, subject: str, op: str) -> Decision:
    """Allowed or denied for a literal ``subject``, and which role and rule decided it."""
    if op not in ("pub", "sub"):
        raise ValidationError("op must be pub or sub")
    validate_subject(subject, templates=False)
    if "*" in subject.split(".") or ">" in subject.split("."):
        raise ValidationError("explain takes a literal subject (no wildcards)")
    roles = list(roles)
    verb = "publish to" if op == "pub" else "subscribe to"
    allows, denies = _rules(roles, op)
    for role, rule in denies:
        if any(subject_matches(p, subject) for p in expand(rule, who)):
            return Decision(False, f"denied: role {role} denies {verb} {rule}", role, rule)
    if not allows:
        names = ", ".join(r.name for r in roles) or "none"
        return Decision(False, f"denied: no role ({names}) lets this user {verb} anything")
    for role, rule in allows:
        if any(subject_matches(p, subject) for p in expand(rule, who)):
            return Decision(True, f"allowed: role {role} allows {verb} {rule}", role, rule)
    return Decision(False, f"denied: no role allows {verb} {subject}")


def identity_from(name: str, tags: Mapping[str, str] | None = None) -> Identity:
    return Identity(name=name, tags=[f"{k}:{v}" for k, v in (tags or {}).items()])
