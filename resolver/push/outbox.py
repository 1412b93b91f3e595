"""The push outbox: a row per account JWT to push, written in the transaction that changed it."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from resolver.db.models import PushOutbox


def enqueue_push(session: AsyncSession, account_key: str, jwt: str, jti: str) -> PushOutbox:
    """Queue ``jwt`` for pushing once the caller commits (nothing is sent before the commit,
    so a server that is told to fetch over HTTP always finds the new JWT)."""
    row = PushOutbox(account_key=account_key, jwt=jwt, jti=jti)
    session.add(row)
    return row
