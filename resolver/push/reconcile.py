"""Reconcile: push every account's current JWT again and tell which servers held another.

What "stale" can mean, given what nats-server tells (DESIGN.md §2, ``resolver.push.probe``):
a server is stale for an account when ``$SYS.REQ.ACCOUNT.<A>.INFO`` shows it using a JWT
other than the one stored here, while no push of that account is pending (a pending push
means the pusher is on its way; a server one push behind is then not stale, only early).
That works for URL, memory and full resolvers alike. Push replies cannot tell it: a
URL-resolver server answers "jwt updated" whether or not it held that JWT already. A server
that has not loaded the account is never stale: it fetches the current JWT when needed.

The re-push goes through the outbox, written under the account's lock like every other
change, so it can never overtake (or be overtaken by) a newer JWT of the account.
Nothing here commits.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from resolver.accounts.service import lock_account
from resolver.db.models import Account, PushOutbox
from resolver.push.outbox import enqueue_push
from resolver.push.probe import HeldAccount
from resolver.push.pusher import PENDING


@dataclass(frozen=True)
class ReconcileTarget:
    """A live account as read at the start: the JWT servers should hold."""

    id: int
    key: str
    name: str
    jwt: str
    #: A push of it was pending then: the pusher is on it, servers are not judged.
    pending: bool


@dataclass
class ReconcileReport:
    """Totals of one reconcile (account keys and server names only)."""

    accounts: int = 0
    #: Re-queued for a push (the others had one pending already, or went away).
    requeued: int = 0
    #: Had a push pending: left to the pusher, not judged.
    pending: int = 0
    #: Whether servers could be asked at all (no NATS connection: only re-pushed).
    probed: bool = False
    servers: list[str] = field(default_factory=list)
    #: Account key → the servers that held a JWT other than the current one.
    stale: dict[str, list[str]] = field(default_factory=dict)
    #: Account key → servers that answered with an error.
    errors: dict[str, list[str]] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)

    def stale_by_server(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for servers in self.stale.values():
            counts.update(servers)
        return dict(sorted(counts.items()))

    def as_dict(self) -> dict[str, Any]:
        return {
            "accounts": self.accounts,
            "requeued": self.requeued,
            "pending": self.pending,
            "probed": self.probed,
            "servers": self.servers,
            "stale_accounts": len(self.stale),
            "stale_by_server": self.stale_by_server(),
            "stale": {
                self.names.get(key, key): servers for key, servers in sorted(self.stale.items())
            },
        }

    def summary(self) -> str:
        checked = (
            f"{len(self.servers)} server(s) asked, {len(self.stale)} account(s) stale somewhere"
            if self.probed
            else "servers not asked (no NATS connection)"
        )
        by_server = ", ".join(f"{s} {n}" for s, n in self.stale_by_server().items())
        return (
            f"reconciled {self.accounts} account(s): {self.requeued} re-queued for push, "
            f"{self.pending} already pending; {checked}"
            + (f" (by server: {by_server})" if by_server else "")
        )


async def reconcile_targets(session: AsyncSession) -> list[ReconcileTarget]:
    """Every live account with a JWT (uploaded ones too: they are served and pushed)."""
    pending = set(
        await session.scalars(
            select(PushOutbox.account_key).where(PushOutbox.status == PENDING).distinct()
        )
    )
    rows = await session.execute(
        select(Account.id, Account.public_key, Account.name, Account.jwt)
        .where(Account.deleted_at.is_(None), Account.jwt.is_not(None))
        .order_by(Account.id)
    )
    return [
        ReconcileTarget(id_, key, name, jwt or "", key in pending) for id_, key, name, jwt in rows
    ]


def stale_servers(target: ReconcileTarget, held: list[HeldAccount], current: str) -> list[str]:
    """Servers holding neither the JWT read at the start nor the current one (a change
    committed meanwhile is being pushed: a server with the start's JWT is only behind)."""
    return sorted(
        {h.server for h in held if h.jwt is not None and h.jwt not in (target.jwt, current)}
    )


async def requeue_current(
    session: AsyncSession, target: ReconcileTarget, held: list[HeldAccount]
) -> tuple[bool, list[str]]:
    """Queue the account's current JWT for a push unless one is pending; (queued, stale
    servers). Under the account's lock, so the row is ordered with any concurrent change."""
    account = await session.get(Account, target.id)
    if account is None or account.deleted_at is not None:
        return False, []
    await lock_account(session, account)
    current = account.jwt or ""
    stale = stale_servers(target, held, current)
    waiting = await session.scalar(
        select(PushOutbox.id)
        .where(PushOutbox.account_key == account.public_key, PushOutbox.status == PENDING)
        .limit(1)
    )
    if waiting is not None or not current:
        return False, stale
    enqueue_push(session, account.public_key, current, account.jti or "")
    return True, stale
