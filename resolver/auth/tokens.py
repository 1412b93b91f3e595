"""API tokens: ``nir_<token_id>_<secret>``, stored as SHA-256 of the secret only.

The secret is 256 random bits, so a fast hash is enough (no password stretching needed);
lookup is by the public ``token_id`` and the hash comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from resolver.audit.service import Actor, record
from resolver.db.models import ApiToken, utcnow
from resolver.errors import ConflictError, NotFoundError, ValidationError

#: ``admin:read`` is the read-only admin scope; ``push`` may upload account JWTs.
SCOPES = ("scim", "admin", "admin:read", "push")
PREFIX = "nir_"
_TOKEN_RE = re.compile(r"^nir_([A-Za-z0-9]{16})_([A-Za-z0-9_-]{43})$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._@:-]{0,199}$")


@dataclass(frozen=True)
class TokenInfo:
    """Who called: what handlers and the audit log see (never the secret)."""

    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        # A full admin token may do what a read-only admin token may.
        return scope in self.scopes or (scope == "admin:read" and "admin" in self.scopes)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def parse_scopes(scopes: list[str] | tuple[str, ...] | str) -> frozenset[str]:
    items = scopes.replace(",", " ").split() if isinstance(scopes, str) else list(scopes)
    unknown = sorted(set(items) - set(SCOPES))
    if not items or unknown:
        raise ValidationError(f"scopes must be among {', '.join(SCOPES)}; got {items!r}")
    return frozenset(items)


async def create_token(
    session: AsyncSession,
    name: str,
    scopes: list[str] | tuple[str, ...] | str,
    *,
    replace: bool = False,
    expires_at: datetime | None = None,
    actor: Actor | None = None,
) -> str:
    """Store a new token and return its plaintext, which is never stored or shown again.

    With ``actor`` (the CLI's), an audit row ``token.create`` records it: name, scopes,
    expiry, never the secret.
    """
    if not _NAME_RE.match(name):
        raise ValidationError("token name must be 1-200 letters, digits, spaces or ._@:-")
    scope_set = parse_scopes(scopes)
    existing = await session.scalar(select(ApiToken).where(ApiToken.name == name))
    if existing is not None:
        if not replace:
            raise ConflictError(f"a token named {name!r} already exists")
        await session.delete(existing)
        await session.flush()
    token_id = "".join(
        secrets.choice("ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789")
        for _ in range(16)
    )
    secret = secrets.token_urlsafe(32)
    session.add(
        ApiToken(
            token_id=token_id,
            name=name,
            secret_hash=_hash(secret),
            scopes=" ".join(sorted(scope_set)),
            expires_at=expires_at,
        )
    )
    await session.flush()
    if actor is not None:
        details = {
            "scopes": sorted(scope_set),
            "expires_at": expires_at.isoformat() if expires_at else None,
            "replaced": existing is not None,
        }
        record(session, actor, "token.create", name, details)
    return f"{PREFIX}{token_id}_{secret}"


async def verify_token(session: AsyncSession, presented: str) -> TokenInfo | None:
    """The token's identity if ``presented`` is a live token, else None."""
    match = _TOKEN_RE.match(presented.strip())
    if match is None:
        return None
    token_id, secret = match.groups()
    row = await session.scalar(select(ApiToken).where(ApiToken.token_id == token_id))
    if row is None or not hmac.compare_digest(row.secret_hash, _hash(secret)):
        return None
    now = utcnow()
    if row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
        return None
    return TokenInfo(name=row.name, scopes=frozenset(row.scopes.split()))


async def revoke_token(session: AsyncSession, name: str, *, actor: Actor | None = None) -> None:
    """Revoke the token ``name``; with ``actor``, audited as ``token.revoke``."""
    row = await session.scalar(select(ApiToken).where(ApiToken.name == name))
    if row is None:
        raise NotFoundError(f"no token named {name!r}")
    row.revoked_at = utcnow()
    if actor is not None:
        record(session, actor, "token.revoke", name, {"scopes": row.scopes.split()})


async def list_tokens(session: AsyncSession) -> list[ApiToken]:
    return list(await session.scalars(select(ApiToken).order_by(ApiToken.name)))
