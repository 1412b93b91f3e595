"""Claim builders: dicts in exactly the field order nats-io/jwt v2 marshals.

Go writes struct fields in declaration order (embedded structs flattened in place), leaves
out ``omitempty`` fields holding a zero value, always writes struct-typed fields even when
tagged ``omitempty`` (so ``"pub":{}``, ``"default_permissions":{...}`` and
``"authorization":{}`` appear), and sorts map keys. The builders below follow the structs
in ``operator_claims.go``, ``account_claims.go``, ``user_claims.go``, ``types.go``,
``signingkeys.go``, ``exports.go`` and ``imports.go``. Pass the result to ``encode``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ._fields import omit_empty, require_key, string_list, tag_list
from .account_parts import (
    account_limits,
    authorization_from,
    export_from,
    import_from,
    mappings_from,
    revocations_from,
)
from .codec import LIB_VERSION
from .errors import JWTClaimsError
from .permissions import account_signing_keys, permissions_from, user_permission_limits

Claims = dict[str, Any]


def _generic(nats: dict[str, Any], claim_type: str, tags: Iterable[str]) -> dict[str, Any]:
    """Append ``GenericFields`` (tags, type, version), which come last in every claim."""
    nats.update(omit_empty([("tags", tag_list(tags))]))
    nats["type"] = claim_type
    nats["version"] = LIB_VERSION
    return nats


def _standard(name: str, subject: str, exp: int | None) -> Claims:
    return omit_empty([("exp", exp), ("name", name), ("sub", subject)])


# --- the three claim builders -------------------------------------------------------------


def operator_claims(
    name: str,
    operator_public_key: str,
    *,
    signing_keys: Iterable[str] = (),
    system_account: str | None = None,
    account_server_url: str | None = None,
    operator_service_urls: Iterable[str] = (),
    strict_signing_key_usage: bool = False,
    tags: Iterable[str] = (),
) -> Claims:
    """Operator claims (``Operator`` struct order). Sign with the operator identity seed."""
    require_key(operator_public_key, "operator", "operator public key")
    keys = string_list(signing_keys)
    for key in keys:
        require_key(key, "operator", "operator signing key")
    if system_account is not None:
        require_key(system_account, "account", "system account")
    if account_server_url and "://" not in account_server_url:
        raise JWTClaimsError("account server url requires a protocol")
    nats = omit_empty(
        [
            ("signing_keys", keys),
            ("account_server_url", account_server_url),
            ("operator_service_urls", string_list(operator_service_urls)),
            ("system_account", system_account),
            ("strict_signing_key_usage", bool(strict_signing_key_usage)),
        ]
    )
    claims = _standard(name, operator_public_key, None)
    claims["nats"] = _generic(nats, "operator", tags)
    return claims


def account_claims(
    name: str,
    account_public_key: str,
    *,
    limits: Mapping[str, Any] | None = None,
    signing_keys: Iterable[str | Mapping[str, Any]] = (),
    revocations: Mapping[str, int] | None = None,
    tags: Iterable[str] = (),
    exports: Iterable[Mapping[str, Any]] = (),
    imports: Iterable[Mapping[str, Any]] = (),
    description: str | None = None,
    exp: int | None = None,
    default_permissions: Mapping[str, Any] | None = None,
    mappings: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    authorization: Mapping[str, Any] | None = None,
) -> Claims:
    """Account claims (``Account`` struct order). Sign with an operator (signing) seed.

    ``limits`` overrides single ``account_limits`` arguments (JSON names); everything not
    given stays unlimited. ``signing_keys`` mixes plain account public keys and
    ``scoped_signing_key`` dicts. Exports and imports are sorted by subject and
    revocations by key, as nats-io/jwt does before encoding.
    """
    require_key(account_public_key, "account", "account public key")
    try:
        limit_values = account_limits(**dict(limits or {}))
    except TypeError as exc:
        raise JWTClaimsError(f"unknown account limit: {exc}") from None
    export_list = sorted((export_from(e) for e in exports), key=lambda e: e["subject"])
    import_list = sorted((import_from(i) for i in imports), key=lambda i: i["subject"])
    nats = omit_empty([("imports", import_list), ("exports", export_list)])
    nats["limits"] = limit_values
    nats.update(
        omit_empty(
            [
                ("signing_keys", account_signing_keys(signing_keys)),
                ("revocations", revocations_from(revocations)),
            ]
        )
    )
    nats["default_permissions"] = permissions_from(default_permissions)
    nats.update(omit_empty([("mappings", mappings_from(mappings))]))
    nats["authorization"] = authorization_from(authorization)
    nats.update(omit_empty([("description", description)]))
    claims = _standard(name, account_public_key, exp)
    claims["nats"] = _generic(nats, "account", tags)
    return claims


def user_claims(
    name: str,
    user_public_key: str,
    *,
    issuer_account: str | None = None,
    permissions: Mapping[str, Any] | None = None,
    limits: Mapping[str, Any] | None = None,
    bearer_token: bool = False,
    allowed_connection_types: Iterable[str] | None = None,
    tags: Iterable[str] = (),
    exp: int | None = None,
    scoped: bool = False,
) -> Claims:
    """User claims (``User`` struct order). Sign with the account seed or a signing key.

    ``issuer_account`` must be set when signing with an account signing key. ``scoped``
    users (signed by a ``user_scope`` key) carry no permissions or limits of their own —
    the server applies the key's template — so Go writes only ``"pub":{},"sub":{}``.
    """
    require_key(user_public_key, "user", "user public key")
    if issuer_account is not None:
        require_key(issuer_account, "account", "issuer account")
    if scoped:
        if issuer_account is None:
            raise JWTClaimsError("a user signed by a scoped key needs issuer_account")
        if permissions or limits or bearer_token or allowed_connection_types:
            raise JWTClaimsError("a user signed by a scoped key cannot carry permissions or limits")
        nats = user_permission_limits(None, {}, default_limit=0)
    else:
        nats = user_permission_limits(
            permissions,
            limits,
            bearer_token=bearer_token,
            allowed_connection_types=allowed_connection_types,
        )
    nats.update(omit_empty([("issuer_account", issuer_account)]))
    claims = _standard(name, user_public_key, exp)
    claims["nats"] = _generic(nats, "user", tags)
    return claims
