"""How the ``/jwt/v1`` routes present JWTs: cache headers, the decoded view, the help page.

Pure functions, kept apart from the handlers so their rules are tested on their own.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

NO_CACHE = "no-cache, no-store, must-revalidate"
#: How long a cache may serve a stale JWT while it revalidates or the service is down.
STALE_SECONDS = 3_600


def cache_control(expires_at: int | None, now: int) -> str:
    """``Cache-Control`` for an account JWT: fresh until its ``exp``, never negative.

    The legacy server computed ``exp - now`` even for JWTs without ``exp`` (a large negative
    max-age). A JWT without ``exp`` is re-validated on each use instead (``no-cache`` with
    the ETag), and an expired one is never fresh.
    """
    if expires_at is None:
        return "no-cache"
    max_age = max(0, expires_at - now)
    if max_age == 0:
        return "max-age=0, must-revalidate"
    stale = min(STALE_SECONDS, max_age)
    return f"max-age={max_age}, stale-while-revalidate={stale}, stale-if-error={stale}"


def etag_of(jti: str) -> str:
    return f'"{jti}"'


def if_none_match(header: str | None, jti: str) -> bool:
    """Whether an ``If-None-Match`` header names this JWT (or ``*``); weak tags count too."""
    if not header:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in header.split(",")}
    return "*" in tags or etag_of(jti) in tags


def _segment_json(segment: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def _when(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def decoded_text(token: str) -> str:
    """Header and claims pretty-printed, then the signature segment, for humans (``?decode``).

    ``iat``/``exp`` get their date beside them, as the legacy server showed. The JWT
    was verified when stored, so its segments are known to decode.
    """
    header_segment, payload_segment, signature = token.split(".")
    header = json.dumps(_segment_json(header_segment), indent=4, ensure_ascii=False)
    claims = _segment_json(payload_segment)
    lines = json.dumps(claims, indent=4, ensure_ascii=False).splitlines()
    for index, line in enumerate(lines):
        for name in ("iat", "exp"):
            prefix = f'    "{name}": '
            if line.startswith(prefix) and isinstance(claims.get(name), int):
                comma = "," if line.endswith(",") else ""
                lines[index] = f"{prefix}{claims[name]} ({_when(claims[name])}){comma}"
    return f"{header}\r\n" + "\n".join(lines) + f"\r\n{signature}\n"


HELP_TEXT = """\
# nats-iam-resolver: account JWT API (nats-account-server compatible)

GET  /jwt/v1/help
     This page.

GET  /jwt/v1/accounts/
GET  /jwt/v1/accounts
     200 with an empty body. nats-server checks this URL when it starts.

GET  /jwt/v1/accounts/<account public key>
     The account JWT (application/jwt). ETag is the JWT's jti, so If-None-Match answers
     304; Cache-Control follows the JWT's expiry. 404 when unknown, 400 when the key is
     not an account public key. Query parameters (each "=true"):
       check   404 when the JWT has expired
       text    text/plain instead of application/jwt
       decode  the JWT's header and claims as indented JSON
       notify  push the current JWT to the NATS servers again

POST /jwt/v1/accounts/<account public key>
     Store an account JWT (the raw JWT as the body, as `nsc push` sends it) and push it.
     It must be signed by the operator or one of its signing keys, its subject must be the
     key in the path, and it must be newer (iat) than the stored one (409 otherwise). For
     accounts whose keys this service holds, an admin bearer token is required.

GET  /jwt/v1/operator
GET  /jwt/v2/operator
     The operator JWT.

GET  /jwt/v1/pack?max=N
     Up to N account JWTs, one "<public key>|<jwt>" line each.
"""
