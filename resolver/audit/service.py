"""Audit log writes. Runs inside the caller's transaction: the entry commits with the change."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from resolver.db.models import AuditEntry


@dataclass(frozen=True)
class Actor:
    """Who acted: a token name, ``admin`` (CLI), an IdP subject, or ``system`` (jobs)."""

    name: str
    request_id: str | None = None
    source: str | None = None


SYSTEM = Actor("system")


def record(
    session: AsyncSession,
    actor: Actor,
    action: str,
    target: str | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEntry:
    """Add one audit row (``action`` like ``scim.user.create``). Never pass a secret."""
    entry = AuditEntry(
        actor=actor.name,
        action=action,
        target=target,
        request_id=actor.request_id,
        source=actor.source,
        details=details or {},
    )
    session.add(entry)
    return entry


# Built once: the credentials hot path writes its audit rows with it.
_INSERT = insert(AuditEntry)


async def record_all(
    conn: AsyncConnection,
    entries: Iterable[tuple[Actor, str, str | None, dict[str, Any]]],
) -> None:
    """``record`` for many rows at once, (actor, action, target, details) each, written
    now in one statement on the session's connection (``await session.connection()``)
    rather than as objects the session flushes one by one."""
    rows = [
        {
            "actor": actor.name,
            "action": action,
            "target": target,
            "request_id": actor.request_id,
            "source": actor.source,
            "details": details,
        }
        for actor, action, target, details in entries
    ]
    if rows:
        await conn.execute(_INSERT, rows)
