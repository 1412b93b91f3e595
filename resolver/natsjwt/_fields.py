"""Helpers shared by the claim builders: Go's omitempty and list normalisation."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from .errors import JWTClaimsError, JWTKeyTypeError
from .keys import is_public_key

NO_LIMIT: Final = -1
# Zero values of the field types used here; note False == 0 and True != 0 in Python.
EMPTY: Final = (None, 0, "", [], {})


def omit_empty(pairs: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """Go's ``omitempty`` for the scalar, slice and map fields the builders use."""
    return {k: v for k, v in pairs if v not in EMPTY}


def require_key(value: Any, kind: str, what: str) -> str:
    if not is_public_key(value, kind):
        raise JWTKeyTypeError(f"{what} must be a valid {kind} public key")
    return value


def string_list(values: Iterable[str] | None) -> list[str]:
    """``StringList.Add``: keeps order, drops blanks and duplicates."""
    result: list[str] = []
    for value in values or ():
        if value and value not in result:
            result.append(value)
    return result


def tag_list(values: Iterable[str] | None) -> list[str]:
    """``TagList.Add``: lower-cases and trims, then drops blanks and duplicates."""
    return string_list(v.strip().lower() for v in values or ())


def only_keys(value: Mapping[str, Any], allowed: Iterable[str], what: str) -> None:
    unknown = set(value) - set(allowed)
    if unknown:
        raise JWTClaimsError(f"unknown {what} fields: {sorted(unknown)}")
