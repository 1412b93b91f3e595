"""Who must hear that an account JWT changed: this process's cache and every other replica.

A service that stores a new account JWT calls ``note_jwt_changed`` inside its transaction.
Nothing is announced before the commit: on PostgreSQL the ``NOTIFY`` is transactional (the
server delivers it at commit, never after a rollback), and the local cache is invalidated by
a session ``after_commit`` hook. So no caller has to remember a post-commit step, and a
replica never drops a cache entry for a change it cannot read yet.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

#: PostgreSQL channel carrying the public key of every account whose JWT changed.
NOTIFY_CHANNEL = "resolver_account_jwt"
#: ``Session.info`` key of the cache to invalidate after commit (set by the app's sessionmaker).
CACHE_INFO_KEY = "resolver.jwt_cache"
_CHANGED_INFO_KEY = "resolver.changed_account_keys"


class Invalidatable(Protocol):
    def invalidate(self, keys: Iterable[str]) -> None: ...


async def note_jwt_changed(session: AsyncSession, account_key: str) -> None:
    """Record that ``account_key``'s JWT changes in this transaction (announced at commit)."""
    changed: set[str] = session.info.setdefault(_CHANGED_INFO_KEY, set())
    if account_key in changed:
        return
    changed.add(account_key)
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        await session.execute(
            text("SELECT pg_notify(:channel, :key)"),
            {"channel": NOTIFY_CHANNEL, "key": account_key},
        )


def changed_keys(session: AsyncSession) -> frozenset[str]:
    """Account keys noted in the current transaction (for tests and diagnostics)."""
    return frozenset(session.info.get(_CHANGED_INFO_KEY, ()))


@event.listens_for(Session, "after_commit")
def _invalidate_after_commit(session: Session) -> None:
    changed: set[str] = session.info.pop(_CHANGED_INFO_KEY, set())
    cache: Any = session.info.get(CACHE_INFO_KEY)
    if changed and cache is not None:
        cache.invalidate(changed)


@event.listens_for(Session, "after_rollback")
def _forget_after_rollback(session: Session) -> None:
    # The changes never happened; a later commit on this session must not announce them.
    session.info.pop(_CHANGED_INFO_KEY, None)
