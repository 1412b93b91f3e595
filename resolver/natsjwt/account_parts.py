"""Account parts: limits, exports, imports, revocations, mappings, authorization.

Field orders follow account_claims.go, exports.go, imports.go and revocation_list.go.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from ._fields import NO_LIMIT, omit_empty, only_keys, require_key, string_list
from .errors import JWTClaimsError, JWTKeyTypeError
from .keys import is_public_key

_JETSTREAM_FIELDS: Final = (
    "mem_storage",
    "disk_storage",
    "streams",
    "consumer",
    "max_ack_pending",
    "mem_max_stream_bytes",
    "disk_max_stream_bytes",
    "max_bytes_required",
)


# --- account limits (account_claims.go) -------------------------------------------------


def _jetstream_limits(values: Mapping[str, Any]) -> list[tuple[str, Any]]:
    return [(name, values.get(name, 0)) for name in _JETSTREAM_FIELDS]


def account_limits(
    *,
    subs: int = NO_LIMIT,
    data: int = NO_LIMIT,
    payload: int = NO_LIMIT,
    imports: int = NO_LIMIT,
    exports: int = NO_LIMIT,
    wildcards: bool = True,
    disallow_bearer: bool = False,
    conn: int = NO_LIMIT,
    leaf: int = NO_LIMIT,
    mem_storage: int = 0,
    disk_storage: int = 0,
    streams: int = 0,
    consumer: int = 0,
    max_ack_pending: int = 0,
    mem_max_stream_bytes: int = 0,
    disk_max_stream_bytes: int = 0,
    max_bytes_required: bool = False,
    tiered_limits: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """``OperatorLimits`` with nsc's defaults: everything unlimited (-1), JetStream off.

    Every NATS/account limit is written explicitly because a missing key decodes as 0,
    and 0 connections means nobody can connect. JetStream is enabled by giving
    ``mem_storage``/``disk_storage`` (-1 = unlimited) or per-tier ``tiered_limits``.
    """
    if tiered_limits and any(
        (
            mem_storage,
            disk_storage,
            streams,
            consumer,
            max_ack_pending,
            mem_max_stream_bytes,
            disk_max_stream_bytes,
            max_bytes_required,
        )
    ):
        raise JWTClaimsError("JetStream limits and tiered JetStream limits are exclusive")
    pairs: list[tuple[str, Any]] = [
        ("subs", subs),
        ("data", data),
        ("payload", payload),
        ("imports", imports),
        ("exports", exports),
        ("wildcards", wildcards),
        ("disallow_bearer", disallow_bearer),
        ("conn", conn),
        ("leaf", leaf),
        ("mem_storage", mem_storage),
        ("disk_storage", disk_storage),
        ("streams", streams),
        ("consumer", consumer),
        ("max_ack_pending", max_ack_pending),
        ("mem_max_stream_bytes", mem_max_stream_bytes),
        ("disk_max_stream_bytes", disk_max_stream_bytes),
        ("max_bytes_required", max_bytes_required),
    ]
    tiered = tiered_limits or {}
    tiers: dict[str, Any] = {}
    for tier in sorted(tiered):
        if not tier:
            raise JWTClaimsError("a JetStream tier name cannot be blank")
        only_keys(tiered[tier], _JETSTREAM_FIELDS, f"tier {tier!r}")
        tiers[tier] = omit_empty(_jetstream_limits(tiered[tier]))
    pairs.append(("tiered_limits", tiers))
    return omit_empty(pairs)


# --- exports, imports, mappings, authorization ------------------------------------------

_EXPORT_FIELDS: Final = (
    "name", "subject", "type", "token_req", "revocations", "response_type",
    "response_threshold", "service_latency", "account_token_position", "advertise",
    "allow_trace", "description", "info_url",
)  # fmt: skip
_IMPORT_FIELDS: Final = (
    "name", "subject", "account", "token", "to", "local_subject", "type", "share",
    "allow_trace",
)  # fmt: skip


def export_type(value: Any) -> str:
    if value not in ("stream", "service"):
        raise JWTClaimsError(f'export/import type must be "stream" or "service", not {value!r}')
    return value


def export_from(item: Mapping[str, Any]) -> dict[str, Any]:
    only_keys(item, _EXPORT_FIELDS, "export")
    if not item.get("subject"):
        raise JWTClaimsError("an export needs a subject")
    values = dict(item)
    values["type"] = export_type(item.get("type"))
    values["revocations"] = revocations_from(item.get("revocations"))
    latency = item.get("service_latency")
    if latency is not None:
        only_keys(latency, ("sampling", "results"), "service_latency")
        values["service_latency"] = {
            "sampling": latency.get("sampling", "headers"),
            "results": latency.get("results", ""),
        }
    return omit_empty((name, values.get(name)) for name in _EXPORT_FIELDS)


def import_from(item: Mapping[str, Any]) -> dict[str, Any]:
    only_keys(item, _IMPORT_FIELDS, "import")
    if not item.get("subject"):
        raise JWTClaimsError("an import needs a subject")
    require_key(item.get("account"), "account", "import account")
    values = dict(item)
    values["type"] = export_type(item.get("type"))
    return omit_empty((name, values.get(name)) for name in _IMPORT_FIELDS)


def revocations_from(value: Mapping[str, int] | None) -> dict[str, int]:
    """``RevocationList``: user key (or ``*``) → unix seconds; a Go map, so sorted."""
    entries = value or {}
    result: dict[str, int] = {}
    for key in sorted(entries):
        if key != "*" and not is_public_key(key, "user"):
            raise JWTKeyTypeError("revocation keys must be user public keys or '*'")
        result[key] = int(entries[key])
    return result


def mappings_from(value: Mapping[str, Sequence[Mapping[str, Any]]] | None) -> dict[str, Any]:
    entries = value or {}
    result: dict[str, Any] = {}
    for subject in sorted(entries):
        targets = []
        for target in entries[subject]:
            only_keys(target, ("subject", "weight", "cluster"), "mapping")
            entry = {"subject": target["subject"]}
            entry.update(
                omit_empty([("weight", target.get("weight")), ("cluster", target.get("cluster"))])
            )
            targets.append(entry)
        result[subject] = targets
    return result


def authorization_from(value: Mapping[str, Any] | None) -> dict[str, Any]:
    """``ExternalAuthorization`` (auth callout); a struct, so written even when empty."""
    value = value or {}
    only_keys(value, ("auth_users", "allowed_accounts", "xkey"), "authorization")
    users = string_list(value.get("auth_users"))
    accounts = string_list(value.get("allowed_accounts"))
    for user in users:
        require_key(user, "user", "authorization auth_users entry")
    # nats-io/jwt's ExternalAuthorization.Validate refuses both; nats-server would too.
    if accounts and not users:
        raise JWTClaimsError("authorization allowed_accounts needs auth_users")
    if "*" in accounts and len(accounts) > 1:
        raise JWTClaimsError('authorization allowed_accounts is either "*" or account keys')
    for account in accounts:
        if account != "*":
            require_key(account, "account", "authorization allowed_accounts entry")
    if value.get("xkey"):
        require_key(value["xkey"], "curve", "authorization xkey")
    return omit_empty(
        [("auth_users", users), ("allowed_accounts", accounts), ("xkey", value.get("xkey"))]
    )
