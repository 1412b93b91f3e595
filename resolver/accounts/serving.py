"""Reads behind the ``/jwt/v1`` routes: the served JWT of an account, the pack, re-pushes."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from resolver.accounts.cache import CachedJWT
from resolver.db.models import Account, PushOutbox
from resolver.push.outbox import enqueue_push


async def load_served_jwt(session: AsyncSession, account_key: str) -> CachedJWT | None:
    """The JWT served for ``account_key``; None when unknown, deleted or never signed."""
    row = (
        await session.execute(
            select(Account.jwt, Account.jti, Account.expires_at).where(
                Account.public_key == account_key,
                Account.deleted_at.is_(None),
                Account.jwt.is_not(None),
            )
        )
    ).one_or_none()
    if row is None:
        return None
    return CachedJWT(
        account_key=account_key, jwt=row.jwt, jti=row.jti or "", expires_at=row.expires_at
    )


async def pack(session: AsyncSession, limit: int | None) -> list[tuple[str, str]]:
    """``(public key, jwt)`` of served accounts, by key, at most ``limit`` (None: all)."""
    query = (
        select(Account.public_key, Account.jwt)
        .where(Account.deleted_at.is_(None), Account.jwt.is_not(None))
        .order_by(Account.public_key)
    )
    if limit is not None:
        query = query.limit(limit)
    return [(row.public_key, row.jwt) for row in await session.execute(query)]


async def requeue_push(session: AsyncSession, served: CachedJWT) -> bool:
    """Queue the current JWT for another push (``?notify=true``); False if one is pending.

    Anyone may ask, so an identical pending push absorbs repeated requests instead of
    piling up outbox rows.
    """
    pending = await session.scalar(
        select(PushOutbox.id)
        .where(
            PushOutbox.account_key == served.account_key,
            PushOutbox.jti == served.jti,
            PushOutbox.status == "pending",
        )
        .limit(1)
    )
    if pending is not None:
        return False
    enqueue_push(session, served.account_key, served.jwt, served.jti)
    return True
