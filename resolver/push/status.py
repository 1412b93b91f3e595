"""What ``GET /admin/v1/push`` shows: the pending outbox and each server's last answer."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from resolver.db.models import PushOutbox

#: How many finished pushes are read to find every server's latest answer.
RECENT_PUSHES = 500


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


async def push_status(session: AsyncSession, *, pending_limit: int = 200) -> dict[str, Any]:
    """Pending rows (oldest first, at most ``pending_limit``) and, per server, the newest
    recorded reply. Rows carry JWT ids, never the JWTs themselves (they can be large)."""
    pending_count = await session.scalar(
        select(func.count()).select_from(PushOutbox).where(PushOutbox.status == "pending")
    )
    pending_rows = await session.scalars(
        select(PushOutbox)
        .where(PushOutbox.status == "pending")
        .order_by(PushOutbox.id)
        .limit(pending_limit)
    )
    pending = [
        {
            "id": row.id,
            "account": row.account_key,
            "jti": row.jti,
            "attempts": row.attempts,
            "created_at": _iso(row.created_at),
            "next_attempt_at": _iso(row.next_attempt_at),
            "last_error": row.last_error,
        }
        for row in pending_rows
    ]
    servers: dict[str, dict[str, Any]] = {}
    recent = await session.scalars(
        select(PushOutbox)
        .where(PushOutbox.status == "done")
        .order_by(PushOutbox.done_at.desc(), PushOutbox.id.desc())
        .limit(RECENT_PUSHES)
    )
    for row in recent:
        # Newest push first: a server's entry is taken from the newest push it answered.
        answers: dict[str, dict[str, Any]] = {}
        for reply in row.results or []:
            name = str(reply.get("server", "?"))
            if name in servers:
                continue
            # A full resolver answers on both subjects; the account subject's answer says
            # whether the account was loaded there, so it is the one shown.
            if name not in answers or ".ACCOUNT." in str(reply.get("subject", "")):
                answers[name] = reply
        for name, reply in answers.items():
            servers[name] = {
                **reply,
                "account": row.account_key,
                "jti": row.jti,
                "outbox_id": row.id,
                "at": _iso(row.done_at),
            }
    return {
        "pending_count": pending_count or 0,
        "pending": pending,
        "servers": [servers[name] for name in sorted(servers)],
    }
