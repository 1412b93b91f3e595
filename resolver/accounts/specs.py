"""An account's declared settings (``Account.spec``), checked before anything is stored.

The spec is what the claims are rebuilt from on every re-sign, so a bad value must be
refused when it is given (a 400 naming the field), not discovered at the next signature.
"""

from __future__ import annotations

from typing import Any

from resolver.errors import ValidationError
from resolver.natsjwt import JWTError, account_claims, new_keypair

SPEC_FIELDS = ("limits", "tags", "exports", "imports", "description", "authorization")
_BOOL_LIMITS = frozenset({"wildcards", "disallow_bearer", "max_bytes_required"})
# Any valid account key: the spec is checked by building claims before the real key exists.
_PLACEHOLDER_KEY = new_keypair("account")[0]


def validate_spec(spec: Any) -> dict[str, Any]:
    """``spec`` checked and normalised (absent fields dropped); ``ValidationError`` if bad."""
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise ValidationError("spec must be a JSON object")
    unknown = sorted(set(spec) - set(SPEC_FIELDS))
    if unknown:
        raise ValidationError(f"unknown spec fields {unknown}; allowed: {', '.join(SPEC_FIELDS)}")
    clean = {key: spec[key] for key in SPEC_FIELDS if spec.get(key) is not None}
    _check_limits(clean.get("limits", {}))
    for field in ("exports", "imports"):
        items = clean.get(field, [])
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise ValidationError(f"spec.{field} must be a list of objects")
    tags = clean.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ValidationError("spec.tags must be a list of strings")
    if not isinstance(clean.get("description", ""), str):
        raise ValidationError("spec.description must be a string")
    # Auth callout (`init --auth-callout`): {auth_users, allowed_accounts, xkey}.
    if not isinstance(clean.get("authorization", {}), dict):
        raise ValidationError("spec.authorization must be an object")
    try:
        account_claims(
            "spec-check",
            _PLACEHOLDER_KEY,
            limits=clean.get("limits"),
            tags=tags,
            exports=clean.get("exports", []),
            imports=clean.get("imports", []),
            description=clean.get("description"),
            authorization=clean.get("authorization"),
        )
    except JWTError as exc:
        raise ValidationError(f"invalid spec: {exc}") from None
    return clean


def _check_limits(limits: Any) -> None:
    if not isinstance(limits, dict):
        raise ValidationError("spec.limits must be an object of limit name to number")
    for name, value in limits.items():
        if name == "tiered_limits":
            if not isinstance(value, dict):
                raise ValidationError("spec.limits.tiered_limits must be an object")
            continue
        if name in _BOOL_LIMITS:
            if not isinstance(value, bool):
                raise ValidationError(f"spec.limits.{name} must be true or false")
        elif isinstance(value, bool) or not isinstance(value, int) or value < -1:
            raise ValidationError(f"spec.limits.{name} must be an integer, -1 for unlimited")
