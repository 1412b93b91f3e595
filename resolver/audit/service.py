"""Audit log writes. Runs inside the caller's transaction: the entry commits with the change."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

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
