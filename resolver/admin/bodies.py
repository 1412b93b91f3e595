"""Reading admin JSON bodies with 400s that say what is wrong, never a 500."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from resolver.errors import ValidationError


async def json_object(request: web.Request, *, allowed: set[str]) -> dict[str, Any]:
    """The request body as a JSON object with no fields outside ``allowed``."""
    raw = await request.read()
    if not raw.strip():
        raise ValidationError("a JSON object body is required")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValidationError(f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ValidationError("body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ValidationError(f"unknown fields {unknown}; allowed: {', '.join(sorted(allowed))}")
    return body


def required_str(body: dict[str, Any], field: str) -> str:
    value = body.get(field)
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(f"{field!r} is required and must be a non-empty string")
    return value


def optional_str(body: dict[str, Any], field: str) -> str | None:
    value = body.get(field)
    if value is not None and not isinstance(value, str):
        raise ValidationError(f"{field!r} must be a string")
    return value
