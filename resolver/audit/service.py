"""Audit log writes. Runs inside the caller's transaction: the entry commits with the change."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from resolver.db.models import AuditEntry, utcnow
from resolver.db.statements import Statements


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
    db: Statements,
    entries: Iterable[tuple[Actor, str, str | None, dict[str, Any]]],
) -> None:
    """``record`` for many rows at once, (actor, action, target, details) each, written
    now in one statement (``resolver.db.statements`` on the session's connection) rather
    than as objects the session flushes one by one."""
    at = utcnow()  # given, not the column default: resolver.db.statements applies none
    rows = [
        {
            "at": at,
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
        await db.execute_many(_INSERT, rows)
