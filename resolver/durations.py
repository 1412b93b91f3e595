"""Durations as people type them: ``90``, ``30s``, ``30m``, ``1h``, ``7d``, ``2w``."""

from __future__ import annotations

import re

from resolver.errors import ValidationError

_UNITS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 604_800}
_DURATION_RE = re.compile(r"^\s*(\d{1,9})\s*([smhdw]?)\s*$")


def parse_duration(value: str | int) -> int:
    """Seconds in ``value``: an integer (seconds) or digits with one unit of s/m/h/d/w."""
    if isinstance(value, bool):
        raise ValidationError("a duration must be like 90, 30m, 1h or 7d")
    if isinstance(value, int):
        return value
    match = _DURATION_RE.match(str(value).lower())
    if match is None:
        raise ValidationError(f"{value!r} is not a duration like 90, 30m, 1h or 7d")
    number, unit = match.groups()
    return int(number) * _UNITS[unit or "s"]
