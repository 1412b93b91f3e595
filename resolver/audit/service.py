"""Audit log writes. Runs inside the caller's transaction: the entry commits with the change."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from resolver.db.models import Account, AuditEntry, utcnow
from resolver.db.statements import Statements
from resolver.natsjwt import is_public_key


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
    *,
    user: str | None = None,
    account: str | None = None,
) -> AuditEntry:
    """Add one audit row (``action`` like ``scim.user.create``). Never pass a secret.

    ``user`` (the person's userName or workload name) and ``account`` (an account public
    key) are what the row is about, for ``GET /admin/v1/audit?user=..&account=..``.
    """
    entry = AuditEntry(
        actor=actor.name,
        action=action,
        target=target,
        request_id=actor.request_id,
        source=actor.source,
        details=details or {},
        user_name=user,
        account_key=account,
    )
    session.add(entry)
    return entry


class AuditRow(NamedTuple):
    """One row for ``record_all``: ``record``'s arguments, in its order."""

    actor: Actor
    action: str
    target: str | None
    details: dict[str, Any]
    user: str | None = None
    account: str | None = None


# Built once: the credentials hot path writes its audit rows with it.
_INSERT = insert(AuditEntry)


async def record_all(db: Statements, entries: Iterable[AuditRow]) -> None:
    """``record`` for many rows at once, written now in one statement
    (``resolver.db.statements`` on the session's connection) rather than as objects the
    session flushes one by one."""
    at = utcnow()  # given, not the column default: resolver.db.statements applies none
    rows = [
        {
            "at": at,
            "actor": actor.name,
            "action": action,
            "target": target,
            "request_id": actor.request_id,
            "source": actor.source,
            "user_name": user,
            "account_key": account,
            "details": details,
        }
        for actor, action, target, details, user, account in entries
    ]
    if rows:
        await db.execute_many(_INSERT, rows)


async def account_key_of(session: AsyncSession, ref: str | None) -> str | None:
    """The public key of the account ``ref`` names (a public key or a name), else None.

    For audit rows about a request that named an account in its own words (a refusal):
    the row must carry the key, which is what ``?account=`` matches.
    """
    if not ref:
        return None
    ref = ref.strip()
    if is_public_key(ref, "account"):
        return ref
    return await session.scalar(select(Account.public_key).where(Account.name == ref))
