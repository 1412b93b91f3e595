"""Permissions, user limits and scoped signing keys (types.go, user_claims.go, signingkeys.go)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from ._fields import NO_LIMIT, omit_empty, only_keys, require_key, string_list
from .errors import JWTClaimsError

CONNECTION_TYPES: Final = frozenset(
    {"STANDARD", "WEBSOCKET", "LEAFNODE", "LEAFNODE_WS", "MQTT", "MQTT_WS", "IN_PROCESS"}
)

# --- permissions and user limits (types.go, user_claims.go) -------------------------------


def permission(allow: Iterable[str] = (), deny: Iterable[str] = ()) -> dict[str, Any]:
    """A ``Permission``: ``{"allow": [...], "deny": [...]}``, empty lists left out."""
    return omit_empty([("allow", string_list(allow)), ("deny", string_list(deny))])


def response_permission(max_msgs: int, ttl_ns: int = 0) -> dict[str, Any]:
    """A ``ResponsePermission``; ``ttl`` is a Go ``time.Duration`` in nanoseconds."""
    return {"max": int(max_msgs), "ttl": int(ttl_ns)}


def permissions(
    *,
    pub: Mapping[str, Any] | None = None,
    sub: Mapping[str, Any] | None = None,
    resp: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``Permissions``: ``pub`` and ``sub`` always written, ``resp`` only when set."""
    result = {"pub": _permission_from(pub, "pub"), "sub": _permission_from(sub, "sub")}
    if resp is not None:
        only_keys(resp, ("max", "ttl"), "resp")
        result["resp"] = response_permission(resp.get("max", 0), resp.get("ttl", 0))
    return result


def _permission_from(value: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    only_keys(value, ("allow", "deny"), what)
    return permission(value.get("allow", ()), value.get("deny", ()))


def permissions_from(value: Mapping[str, Any] | None) -> dict[str, Any]:
    value = value or {}
    only_keys(value, ("pub", "sub", "resp"), "permissions")
    return permissions(pub=value.get("pub"), sub=value.get("sub"), resp=value.get("resp"))


_USER_LIMIT_FIELDS: Final = ("src", "times", "times_location", "subs", "data", "payload")


def _user_limits_from(value: Mapping[str, Any] | None, default: int) -> dict[str, Any]:
    """``Limits`` = ``UserLimits`` (src, times, times_location) + ``NatsLimits``.

    NatsLimits missing from ``value`` get ``default`` (-1 for users and scope templates,
    as ``NewUserClaims``/``NewUserScope`` do: 0 would mean "none allowed").
    """
    value = value or {}
    only_keys(value, _USER_LIMIT_FIELDS, "limits")
    times = []
    for item in value.get("times") or ():
        only_keys(item, ("start", "end"), "times")
        times.append(omit_empty([("start", item.get("start")), ("end", item.get("end"))]))
    return omit_empty(
        [
            ("src", string_list(value.get("src"))),
            ("times", times),
            ("times_location", value.get("times_location")),
            ("subs", value.get("subs", default)),
            ("data", value.get("data", default)),
            ("payload", value.get("payload", default)),
        ]
    )


def _connection_types(values: Iterable[str] | None) -> list[str]:
    result = string_list(values)
    unknown = set(result) - CONNECTION_TYPES
    if unknown:
        raise JWTClaimsError(f"unknown connection types: {sorted(unknown)}")
    return result


def user_permission_limits(
    perms: Mapping[str, Any] | None,
    limits: Mapping[str, Any] | None,
    *,
    bearer_token: bool = False,
    proxy_required: bool = False,
    allowed_connection_types: Iterable[str] | None = None,
    default_limit: int = NO_LIMIT,
) -> dict[str, Any]:
    result = permissions_from(perms)
    result.update(_user_limits_from(limits, default_limit))
    result.update(
        omit_empty(
            [
                ("bearer_token", bool(bearer_token)),
                ("proxy_required", bool(proxy_required)),
                ("allowed_connection_types", _connection_types(allowed_connection_types)),
            ]
        )
    )
    return result


# --- signing keys (signingkeys.go) -------------------------------------------------------

_TEMPLATE_FLAGS: Final = ("bearer_token", "proxy_required", "allowed_connection_types")


def scoped_signing_key(
    key: str, role: str, template: Mapping[str, Any], description: str | None = None
) -> dict[str, Any]:
    """A ``UserScope`` signing key: users it signs get ``template`` (their own is empty).

    ``template`` is a ``UserPermissionLimits`` in its JSON shape (``pub``, ``sub``,
    ``resp``, ``src``, ``times``, ``times_location``, ``subs``, ``data``, ``payload``,
    ``bearer_token``, ``proxy_required``, ``allowed_connection_types``); it may use
    ``{{name()}}``, ``{{subject()}}``, ``{{tag(x)}}``, ``{{account-name()}}``,
    ``{{account-tag(x)}}``. ``role`` and ``description`` have no omitempty in Go.
    """
    require_key(key, "account", "scoped signing key")
    perm_keys = ("pub", "sub", "resp")
    only_keys(template, (*perm_keys, *_USER_LIMIT_FIELDS, *_TEMPLATE_FLAGS), "template")
    normalized = user_permission_limits(
        {k: template[k] for k in perm_keys if k in template},
        {k: template[k] for k in _USER_LIMIT_FIELDS if k in template},
        bearer_token=template.get("bearer_token", False),
        proxy_required=template.get("proxy_required", False),
        allowed_connection_types=template.get("allowed_connection_types"),
    )
    return {
        "kind": "user_scope",
        "key": key,
        "role": role,
        "template": normalized,
        "description": description or "",
    }


def account_signing_keys(keys: Iterable[str | Mapping[str, Any]]) -> list[Any]:
    """``SigningKeys`` is a Go map written as an array sorted by key."""
    by_key: dict[str, Any] = {}
    for item in keys:
        if isinstance(item, str):
            entry: Any = require_key(item, "account", "account signing key")
            key = item
        else:
            only_keys(item, ("kind", "key", "role", "template", "description"), "scoped key")
            if item.get("kind") != "user_scope":
                raise JWTClaimsError(f"unknown signing key kind {item.get('kind')!r}")
            entry = scoped_signing_key(
                item.get("key", ""),
                item.get("role", ""),
                item.get("template") or {},
                item.get("description"),
            )
            key = entry["key"]
        if key in by_key:
            raise JWTClaimsError(f"signing key {key} is listed twice")
        by_key[key] = entry
    return [by_key[k] for k in sorted(by_key)]
