"""Roles: human-readable permission sets compiled into ``user_scope`` signing-key templates.

A role is written the way an operator thinks (publish/subscribe allow and deny, response
permissions, limits, connection types, JetStream streams and KV buckets by name) and compiled
into exactly what nats-server enforces. A user holding several roles in one account gets one
scoped key for that role *set*; its template is the union of the roles' permissions.

Union rule, chosen because a permission block has a single deny list: the allows of every
role are combined, and so are the denies, so a deny in any role of the set still wins. This
can only be stricter than the roles one by one, never looser; ``explain`` names the rule.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from resolver.durations import parse_duration
from resolver.errors import ValidationError
from resolver.natsjwt.permissions import user_permission_limits
from resolver.policy.jetstream import JetStreamGrant, expand_grants, parse_grants
from resolver.policy.subjects import validate_queue_subject, validate_subject

CONNECTION_TYPES = (
    "STANDARD",
    "WEBSOCKET",
    "LEAFNODE",
    "LEAFNODE_WS",
    "MQTT",
    "MQTT_WS",
    "IN_PROCESS",
)
LIMIT_KEYS = ("subs", "data", "payload")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
#: Replies to requests arrive on the requester's inbox; every role needs to receive them.
INBOX = "_INBOX.>"
ROLE_KEYS = (
    "description",
    "publish",
    "subscribe",
    "responses",
    "limits",
    "connection_types",
    "max_ttl",
    "jetstream",
)


def _duration(value: object, what: str) -> int:
    try:
        seconds = parse_duration(value)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ValidationError(f"{what}: {exc}") from None
    if seconds <= 0:
        raise ValidationError(f"{what}: must be positive")
    return seconds


@dataclass(frozen=True)
class RoleSpec:
    name: str
    description: str = ""
    pub_allow: tuple[str, ...] = ()
    pub_deny: tuple[str, ...] = ()
    sub_allow: tuple[str, ...] = ()
    sub_deny: tuple[str, ...] = ()
    #: Allow publishing to reply subjects of requests received: (max messages, ttl seconds).
    responses: tuple[int, int] | None = None
    limits: Mapping[str, int] = field(default_factory=dict)
    connection_types: tuple[str, ...] = ()
    #: Longest lifetime of a credential issued under this role, in seconds.
    max_ttl: int = 3600
    jetstream: tuple[JetStreamGrant, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The stored and exported form (what ``parse_role`` reads back)."""
        out: dict[str, Any] = {}
        if self.description:
            out["description"] = self.description
        for key, allow, deny in (
            ("publish", self.pub_allow, self.pub_deny),
            ("subscribe", self.sub_allow, self.sub_deny),
        ):
            if allow or deny:
                out[key] = {k: list(v) for k, v in (("allow", allow), ("deny", deny)) if v}
        if self.responses is not None:
            out["responses"] = {"max": self.responses[0], "ttl": self.responses[1]}
        if self.limits:
            out["limits"] = dict(self.limits)
        if self.connection_types:
            out["connection_types"] = list(self.connection_types)
        out["max_ttl"] = self.max_ttl
        if self.jetstream:
            out["jetstream"] = [grant.to_dict() for grant in self.jetstream]
        return out


def _subjects(value: object, what: str, *, queues: bool = False) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise ValidationError(f"{what}: expected a list of subjects")
    check = validate_queue_subject if queues else validate_subject
    try:
        return tuple(dict.fromkeys(check(item) for item in value))
    except ValidationError as exc:
        raise ValidationError(f"{what}: {exc}") from None


def _allow_deny(value: object, what: str, *, queues: bool = False) -> tuple[tuple[str, ...], ...]:
    if value is None:
        return (), ()
    if isinstance(value, list | str):  # a bare list means "allow"
        return _subjects(value, f"{what}.allow", queues=queues), ()
    if not isinstance(value, Mapping):
        raise ValidationError(f"{what}: expected {{allow: [...], deny: [...]}}")
    unknown = set(value) - {"allow", "deny"}
    if unknown:
        raise ValidationError(f"{what}: unknown key(s) {sorted(unknown)}")
    return (
        _subjects(value.get("allow"), f"{what}.allow", queues=queues),
        _subjects(value.get("deny"), f"{what}.deny", queues=queues),
    )


def _limits(value: object, what: str) -> dict[str, int]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValidationError(f"{what}: expected a mapping of subs, data, payload")
    out: dict[str, int] = {}
    for key, raw in value.items():
        if key not in LIMIT_KEYS:
            raise ValidationError(f"{what}: unknown limit {key!r} (subs, data, payload)")
        if isinstance(raw, bool) or not isinstance(raw, int) or raw < -1:
            raise ValidationError(f"{what}.{key}: expected an integer, -1 for unlimited")
        out[key] = raw
    return out


def parse_role(name: str, body: Mapping[str, Any]) -> RoleSpec:
    """Validate a role definition (from the admin API or a policy file) into a ``RoleSpec``."""
    if not _NAME.match(name or ""):
        raise ValidationError(f"role name {name!r}: use letters, digits, '_', '.', '-'")
    if not isinstance(body, Mapping):
        raise ValidationError(f"role {name}: expected a mapping")
    unknown = set(body) - set(ROLE_KEYS)
    if unknown:
        raise ValidationError(f"role {name}: unknown key(s) {sorted(unknown)}")
    pub_allow, pub_deny = _allow_deny(body.get("publish"), f"role {name}: publish")
    sub_allow, sub_deny = _allow_deny(body.get("subscribe"), f"role {name}: subscribe", queues=True)
    responses = None
    if body.get("responses") is not None:
        resp = body["responses"]
        if not isinstance(resp, Mapping) or set(resp) - {"max", "ttl"}:
            raise ValidationError(f"role {name}: responses: expected {{max: N, ttl: 5s}}")
        max_msgs = resp.get("max", 1)
        if isinstance(max_msgs, bool) or not isinstance(max_msgs, int) or max_msgs < -1:
            raise ValidationError(f"role {name}: responses.max: expected an integer")
        ttl = _duration(resp["ttl"], f"role {name}: responses.ttl") if "ttl" in resp else 0
        responses = (max_msgs, ttl)
    types = body.get("connection_types") or []
    if not isinstance(types, list) or any(t not in CONNECTION_TYPES for t in types):
        raise ValidationError(
            f"role {name}: connection_types: each must be one of {', '.join(CONNECTION_TYPES)}"
        )
    description = body.get("description") or ""
    if not isinstance(description, str):
        raise ValidationError(f"role {name}: description must be text")
    return RoleSpec(
        name=name,
        description=description,
        pub_allow=pub_allow,
        pub_deny=pub_deny,
        sub_allow=sub_allow,
        sub_deny=sub_deny,
        responses=responses,
        limits=_limits(body.get("limits"), f"role {name}: limits"),
        connection_types=tuple(dict.fromkeys(types)),
        max_ttl=_duration(body.get("max_ttl", 3600), f"role {name}: max_ttl"),
        jetstream=parse_grants(body.get("jetstream"), f"role {name}: jetstream"),
    )


def role_set_name(roles: Iterable[RoleSpec | str]) -> str:
    """Canonical name of a role set: sorted, comma-joined (the scoped key's ``role``)."""
    names = sorted({r if isinstance(r, str) else r.name for r in roles})
    if not names:
        raise ValidationError("a role set needs at least one role")
    return ",".join(names)


def _union(*lists: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(item for items in lists for item in items))


def _max_limit(values: list[int]) -> int:
    # -1 means unlimited, so it beats any number.
    return -1 if any(v == -1 for v in values) else max(values)


def compile_template(roles: Iterable[RoleSpec]) -> dict[str, Any]:
    """The ``user_scope`` template (permissions and limits) for a set of roles."""
    roles = sorted(roles, key=lambda r: r.name)
    if not roles:
        raise ValidationError("a role set needs at least one role")
    js_pub, js_sub = expand_grants(grant for role in roles for grant in role.jetstream)
    pub_allow = _union(*(r.pub_allow for r in roles), js_pub)
    sub_allow = _union(*(r.sub_allow for r in roles), js_sub)
    if pub_allow:
        # A role that may publish requests must be able to receive the replies.
        sub_allow = _union(sub_allow, [INBOX])
    resp = None
    answering = [r.responses for r in roles if r.responses is not None]
    if answering:
        max_msgs = _max_limit([m for m, _ in answering])
        resp = {"max": max_msgs, "ttl": max(t for _, t in answering) * 1_000_000_000}
    perms: dict[str, Any] = {
        "pub": _permission(pub_allow, _union(*(r.pub_deny for r in roles))),
        "sub": _permission(sub_allow, _union(*(r.sub_deny for r in roles))),
    }
    if resp is not None:
        perms["resp"] = resp
    limits = {key: _max_limit([r.limits.get(key, -1) for r in roles]) for key in LIMIT_KEYS}
    # No role restricting connection types means all are allowed; otherwise the union.
    types = None
    if all(r.connection_types for r in roles):
        types = _union(*(r.connection_types for r in roles))
    return user_permission_limits(perms, limits, allowed_connection_types=types)


def _permission(allow: list[str], deny: list[str]) -> dict[str, list[str]]:
    # An empty allow list means "everything" to nats-server, so a role set that grants no
    # subject in a direction must say so with an explicit deny of everything.
    if not allow:
        return {"deny": [">"]}
    return {"allow": allow, "deny": deny} if deny else {"allow": allow}


def max_ttl(roles: Iterable[RoleSpec]) -> int:
    """Credential lifetime cap for a role set: the strictest role's (shortest wins)."""
    return min(role.max_ttl for role in roles)
