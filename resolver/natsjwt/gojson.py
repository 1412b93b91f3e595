"""JSON bytes exactly as Go's ``encoding/json`` ``Marshal`` writes them.

NATS JWT signatures and ``jti`` hashes are computed over the bytes Go produces, so the
Python side must reproduce them: compact separators, raw UTF-8, and Go's HTML-safe
escaping of ``<``, ``>``, ``&`` plus U+2028/U+2029. Key order is the caller's (Go writes
struct fields in declaration order; the claim builders put them in that order and sort
map keys, as Go does for maps).
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

_GO_ESCAPES: Final = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}
_TRANSLATION: Final = str.maketrans(_GO_ESCAPES)
_NEEDS_ESCAPE: Final = re.compile("[" + "".join(_GO_ESCAPES) + "]")  # one scan, not five
# Made once: ``json.dumps`` with these options builds an encoder per call, and every user
# JWT is serialized twice (its jti hash, then the payload) on the credentials hot path.
_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _check_no_floats(value: Any) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            # Go prints floats differently (1e+21 vs 1e21, no "1.0"); NATS claims hold
            # only integers, so a float would give bytes Go never writes.
            raise ValueError(f"floats are not supported in NATS JWT claims: {item!r}")
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)


def go_json_dumps(value: Any) -> bytes:
    """Serialize ``value`` (dicts, lists, str, int, bool, None) like Go's ``json.Marshal``.

    Control characters come out as ``\\b \\f \\n \\r \\t`` or ``\\u00xx`` in both Python
    and Go (since Go 1.22). The HTML-sensitive characters only ever appear inside JSON
    strings, so replacing them in the serialized text is exact.
    """
    _check_no_floats(value)
    text = _ENCODER.encode(value)
    if _NEEDS_ESCAPE.search(text) is not None:
        # Rare in claims, and translate() costs as much as the encoding: only if needed.
        text = text.translate(_TRANSLATION)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates: Go would have written U+FFFD; refuse rather than diverge.
        raise ValueError("claims contain a string that is not valid Unicode") from None


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate JSON key {key!r}")
        result[key] = value
    return result


def go_json_loads(data: bytes) -> Any:
    """Parse JSON keeping key order, refusing duplicate keys and NaN/Infinity.

    Duplicate keys are refused because two parsers may keep different copies (an
    attacker could then show one ``iss`` to a tool and another to nats-server).
    """
    return json.loads(
        data.decode("utf-8"),
        object_pairs_hook=_no_duplicate_keys,
        parse_constant=_reject_constant,
    )


def _reject_constant(value: str) -> Any:
    raise ValueError(f"invalid JSON constant {value}")
