"""``GET /metrics``: Prometheus text format, for a token with the ``admin:read`` scope.

The counters and histograms are updated as things happen (resolver.metrics). What the
database holds is read here, at each scrape: the push outbox (how many JWTs wait, and for
how long) and, for the ``TOP_ACCOUNTS`` accounts with the largest JWTs, each JWT's encoded
size and its revocation entries (the two that approach nats-server's limits as people come
and go). Read at the scrape, these show the database as it is, whichever replica wrote it.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from sqlalchemy import func, select

from resolver.appkeys import SESSIONMAKER
from resolver.db.models import Account, PushOutbox
from resolver.http.auth import authenticate
from resolver.http.handling import add_routes
from resolver.metrics import (
    ACCOUNT_JWT_BYTES,
    ACCOUNT_REVOCATIONS,
    OUTBOX_OLDEST_SECONDS,
    OUTBOX_PENDING,
)

#: Accounts reported by JWT size: enough to see the ones growing, few enough series.
TOP_ACCOUNTS = 20


def _revocation_entries(token: str) -> int:
    # Our own stored JWT: only its payload is read, the signature is not checked again.
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return len(claims.get("nats", {}).get("revocations") or {})
    except (IndexError, ValueError, AttributeError):
        return 0


async def _read_database(app: web.Application) -> None:
    async with app[SESSIONMAKER]() as session:
        pending, oldest = (
            await session.execute(
                select(func.count(), func.min(PushOutbox.created_at)).where(
                    PushOutbox.status == "pending"
                )
            )
        ).one()
        largest = (
            await session.execute(
                select(Account.name, Account.jwt)
                .where(Account.deleted_at.is_(None), Account.jwt.is_not(None))
                .order_by(func.length(Account.jwt).desc(), Account.name)
                .limit(TOP_ACCOUNTS)
            )
        ).all()
    OUTBOX_PENDING.set(pending)
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=UTC)  # SQLite keeps no zone; the column is UTC
    OUTBOX_OLDEST_SECONDS.set(
        max(0.0, (datetime.now(UTC) - oldest).total_seconds()) if oldest is not None else 0.0
    )
    # Series of accounts that left the top (or were deleted) go, not linger at old values.
    ACCOUNT_JWT_BYTES.clear()
    ACCOUNT_REVOCATIONS.clear()
    for name, token in largest:
        ACCOUNT_JWT_BYTES.labels(name).set(len(token))
        ACCOUNT_REVOCATIONS.labels(name).set(_revocation_entries(token))


async def get_metrics(request: web.Request) -> web.Response:
    await authenticate(request, "admin:read")
    await _read_database(request.app)
    return web.Response(
        body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


def setup(app: web.Application) -> None:
    add_routes(app, [web.get("/metrics", get_metrics)])
