"""The pusher: sends committed outbox rows to nats-server, newest per account, in order.

nats-server keeps whichever account JWT it was pushed last, even an older one (DESIGN.md §2),
so pushes for one account must never overtake each other. Two rules guarantee it:

- per account only the newest pending row is pushed; older pending rows are marked
  ``superseded`` (their JWTs are history: pushing them later would roll a server back);
- one account is pushed by one pusher at a time: this loop is sequential per account, and
  on PostgreSQL, where several replicas run a pusher, an account is only taken under a
  transaction-scoped advisory lock, its row selected ``FOR UPDATE SKIP LOCKED``, and the
  transaction stays open until the result is recorded.

Failures (no connection, nobody answered) leave the row pending with ``attempts`` counted
and ``next_attempt_at`` pushed back exponentially; the table is the queue, so a restart
loses nothing. The loop owns its transactions: it is the one place in the push package that
commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from resolver.audit.service import SYSTEM, record
from resolver.db.models import PushOutbox, utcnow
from resolver.metrics import PUSH_SERVER_REPLIES, PUSHES
from resolver.push.connection import PushRejectedError, PushUnavailableError, ServerReply

log = logging.getLogger(__name__)

PENDING, DONE, SUPERSEDED, FAILED = "pending", "done", "superseded", "failed"
#: Finished rows are kept this long for ``GET /admin/v1/push`` and audits, then deleted.
KEEP_FINISHED = timedelta(days=7)
PRUNE_EVERY_SECONDS = 600.0
#: How long ``stop`` waits for a round beyond the reply deadline before cancelling it.
STOP_GRACE_SECONDS = 5.0


class PushTransport(Protocol):
    async def push_claims(
        self, account_key: str, jwt: str, gather_for: float
    ) -> list[ServerReply]: ...


@dataclass(frozen=True)
class ClaimedRow:
    """An outbox row taken for one push (plain values: it outlives its session on SQLite)."""

    id: int
    account_key: str
    jwt: str
    jti: str
    attempts: int


@dataclass
class PushOutcome:
    row: ClaimedRow
    replies: list[ServerReply] = field(default_factory=list)
    #: Why nothing usable came back (the row is retried); None when servers answered.
    failure: str | None = None
    #: The failure will not go away by retrying: the row is marked failed.
    permanent: bool = False


def backoff_seconds(attempts: int, *, base: float, cap: float) -> float:
    """Delay before attempt ``attempts + 1``: base, 2·base, 4·base, ... at most ``cap``."""
    return min(cap, base * (2 ** max(0, attempts - 1)))


def advisory_key(account_key: str) -> int:
    """A signed 64-bit PostgreSQL advisory lock key for pushing ``account_key``."""
    digest = hashlib.sha256(f"nats-iam-resolver:push:{account_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def summarize_errors(replies: list[ServerReply]) -> str | None:
    errors = [r for r in replies if r.result == "error"]
    if not errors:
        return None
    described = "; ".join(sorted({f"{r.server}: {r.message}" for r in errors}))
    return f"{len(errors)} of {len(replies)} replies were errors: {described}"[:2000]


class Pusher:
    """Background loop over the outbox; ``wake()`` after a commit makes it look at once."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        transport: PushTransport,
        *,
        timeout: float,
        row_locks: bool,
        batch_size: int = 50,
        sweep_seconds: float = 2.0,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
    ) -> None:
        self._sessions = sessions
        self._transport = transport
        self._timeout = timeout
        #: PostgreSQL: several replicas may push, so rows and accounts are locked.
        self._row_locks = row_locks
        self._batch_size = batch_size
        self._sweep_seconds = sweep_seconds
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._wakeup = asyncio.Event()
        self._ignore_backoff = False
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._last_prune = 0.0

    def wake(self) -> None:
        """Look at the outbox now (called after commits that queued pushes)."""
        self._wakeup.set()

    def wake_reconnected(self) -> None:
        """The connection is (back) up: push everything pending now, back-off or not.

        The back-off exists not to hammer a NATS that is down; once it is up, waiting out
        a 30 s delay would only keep a revocation from reaching the servers.
        """
        self._ignore_backoff = True
        self._wakeup.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="push-outbox")

    async def stop(self) -> None:
        """Let the round in progress finish (a push sent but not recorded would be sent
        again by the next process), then end the loop; cancel it if it takes too long."""
        if self._task is None:
            return
        self._stopping = True
        self._wakeup.set()
        try:
            async with asyncio.timeout(self._timeout + STOP_GRACE_SECONDS):
                await asyncio.shield(self._task)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None

    async def _loop(self) -> None:
        failures = 0
        while not self._stopping:
            # Clear before looking: a wake-up that arrives while we work runs another round.
            self._wakeup.clear()
            ignore_backoff, self._ignore_backoff = self._ignore_backoff, False
            try:
                handled = await self.run_once(ignore_backoff=ignore_backoff)
                await self._maybe_prune()
                delay = 0.0 if handled >= self._batch_size else await self._idle_delay()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception:
                # Typically the database is unreachable: the rows are safe where they are.
                failures += 1
                log.exception("push outbox round failed")
                delay = backoff_seconds(failures, base=1.0, cap=self._backoff_cap)
            if delay > 0 and not self._stopping:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wakeup.wait()

    async def _idle_delay(self) -> float:
        """Until the next sweep, or sooner when a backed-off row becomes due."""
        async with self._sessions() as session:
            soonest = await session.scalar(
                select(func.min(PushOutbox.next_attempt_at)).where(PushOutbox.status == PENDING)
            )
        if soonest is None:
            return self._sweep_seconds
        until = (soonest - utcnow()).total_seconds()
        # A due row another replica holds would otherwise make this loop spin.
        return max(0.25, min(self._sweep_seconds, until))

    async def run_once(self, *, ignore_backoff: bool = False) -> int:
        """One round: claim up to ``batch_size`` accounts, push each, record; rows taken."""
        due_by = None if ignore_backoff else utcnow()
        if self._row_locks:
            # The locks taken by the claim must outlive the push, so one transaction spans
            # claim, push and record; a crash in between rolls back and the row is retried.
            async with self._sessions() as session, session.begin():
                claimed = await self._claim(session, due_by)
                if not claimed:
                    return 0
                outcomes = await self._push_all(claimed)
                await self._record(session, outcomes)
            _count(outcomes)
            return len(claimed)
        # SQLite: one pusher per database file. The read is closed before the push, because a
        # WAL read snapshot cannot become a write transaction once another writer committed.
        async with self._sessions() as session:
            claimed = await self._claim(session, due_by)
        if not claimed:
            return 0
        outcomes = await self._push_all(claimed)
        async with self._sessions() as session, session.begin():
            await self._record(session, outcomes)
        _count(outcomes)
        return len(claimed)

    async def _claim(self, session: AsyncSession, due_by: datetime | None) -> list[ClaimedRow]:
        query = (
            select(PushOutbox.account_key, func.max(PushOutbox.id).label("newest"))
            .where(PushOutbox.status == PENDING)
            .group_by(PushOutbox.account_key)
            # Accounts waiting longest first, so a busy account cannot starve the others.
            .order_by(func.min(PushOutbox.id))
            .limit(self._batch_size)
        )
        if due_by is not None:
            query = query.where(PushOutbox.next_attempt_at <= due_by)
        accounts = [(row[0], row[1]) for row in await session.execute(query)]
        if not accounts:
            return []
        if not self._row_locks:
            rows = await session.scalars(
                select(PushOutbox).where(PushOutbox.id.in_([newest for _, newest in accounts]))
            )
            return [_claimed(row) for row in rows]
        claimed: list[ClaimedRow] = []
        for account_key, _ in accounts:
            locked = await session.scalar(
                select(func.pg_try_advisory_xact_lock(advisory_key(account_key)))
            )
            if not locked:
                continue  # another replica is pushing this account right now
            # Re-read under the lock: a newer row may have been committed since the scan.
            row = await session.scalar(
                select(PushOutbox)
                .where(PushOutbox.account_key == account_key, PushOutbox.status == PENDING)
                .order_by(PushOutbox.id.desc())
                .limit(1)
                .with_for_update(skip_locked=True)
            )
            if row is not None:
                claimed.append(_claimed(row))
        return claimed

    async def _push_all(self, claimed: list[ClaimedRow]) -> list[PushOutcome]:
        # Different accounts are independent, so they share one reply deadline.
        return list(await asyncio.gather(*(self._push_one(row) for row in claimed)))

    async def _push_one(self, row: ClaimedRow) -> PushOutcome:
        try:
            replies = await self._transport.push_claims(row.account_key, row.jwt, self._timeout)
        except PushUnavailableError as exc:
            return PushOutcome(row, failure=str(exc))
        except PushRejectedError as exc:
            return PushOutcome(row, failure=str(exc), permanent=True)
        if not replies:
            return PushOutcome(row, failure=f"no nats-server answered within {self._timeout:g} s")
        return PushOutcome(row, replies=replies)

    async def _record(self, session: AsyncSession, outcomes: list[PushOutcome]) -> None:
        now = utcnow()
        for outcome in outcomes:
            row = outcome.row
            # Older pending JWTs of the account must never go out after this one.
            await session.execute(
                update(PushOutbox)
                .where(
                    PushOutbox.account_key == row.account_key,
                    PushOutbox.status == PENDING,
                    PushOutbox.id < row.id,
                )
                .values(status=SUPERSEDED, done_at=now)
            )
            attempts = row.attempts + 1
            values: dict[str, Any]
            if outcome.failure is None:
                values = {
                    "status": DONE,
                    "done_at": now,
                    "results": [reply.as_json() for reply in outcome.replies],
                    "last_error": summarize_errors(outcome.replies),
                }
                _log_pushed(row, outcome.replies)
            elif outcome.permanent:
                values = {"status": FAILED, "done_at": now, "last_error": outcome.failure}
                log.error(
                    "push of account %s (jti %s) failed for good: %s",
                    row.account_key,
                    row.jti,
                    outcome.failure,
                )
            else:
                delay = backoff_seconds(attempts, base=self._backoff_base, cap=self._backoff_cap)
                values = {
                    "next_attempt_at": now + timedelta(seconds=delay),
                    "last_error": outcome.failure,
                }
                log.warning(
                    "push of account %s (jti %s) failed, attempt %d, retry in %.1f s: %s",
                    row.account_key,
                    row.jti,
                    attempts,
                    delay,
                    outcome.failure,
                )
            await session.execute(
                update(PushOutbox)
                .where(PushOutbox.id == row.id, PushOutbox.status == PENDING)
                .values(attempts=attempts, **values)
            )
            _audit(session, outcome, attempts)

    async def _maybe_prune(self) -> None:
        if time.monotonic() - self._last_prune < PRUNE_EVERY_SECONDS:
            return
        self._last_prune = time.monotonic()
        async with self._sessions() as session, session.begin():
            await prune_finished(session, before=utcnow() - KEEP_FINISHED)


async def prune_finished(session: AsyncSession, *, before: datetime) -> None:
    """Delete done and superseded rows finished before ``before`` (pending rows never)."""
    await session.execute(
        delete(PushOutbox).where(
            PushOutbox.status.in_([DONE, SUPERSEDED]), PushOutbox.done_at < before
        )
    )


def _count(outcomes: list[PushOutcome]) -> None:
    """The metrics of a round whose record committed (a rolled-back one is pushed again)."""
    for outcome in outcomes:
        if outcome.failure is None:
            PUSHES.labels("done").inc()
            for reply in outcome.replies:
                PUSH_SERVER_REPLIES.labels(reply.server, reply.result).inc()
        else:
            PUSHES.labels("failed" if outcome.permanent else "retry").inc()


def _claimed(row: PushOutbox) -> ClaimedRow:
    return ClaimedRow(
        id=row.id, account_key=row.account_key, jwt=row.jwt, jti=row.jti, attempts=row.attempts
    )


def _audit(session: AsyncSession, outcome: PushOutcome, attempts: int) -> None:
    """The push result's audit row: delivered (with each server's answer), given up, or
    the first failure of a retried push (later retries of it would only repeat that one)."""
    row = outcome.row
    details: dict[str, Any] = {"jti": row.jti, "attempts": attempts}
    if outcome.failure is None:
        action = "push.done"
        details["servers"] = [
            {"server": r.server, "code": r.code, "result": r.result} for r in outcome.replies
        ]
        details["errors"] = summarize_errors(outcome.replies)
    elif outcome.permanent or attempts == 1:
        action = "push.failed" if outcome.permanent else "push.retry"
        details["error"] = outcome.failure
    else:
        return
    record(session, SYSTEM, action, row.account_key, details, account=row.account_key)


def _log_pushed(row: ClaimedRow, replies: list[ServerReply]) -> None:
    counts = {"updated": 0, "skipped": 0, "error": 0}
    for reply in replies:
        counts[reply.result] += 1
    level = logging.WARNING if counts["error"] else logging.INFO
    log.log(
        level,
        "pushed account %s (jti %s): %d updated, %d skipped, %d errors%s",
        row.account_key,
        row.jti,
        counts["updated"],
        counts["skipped"],
        counts["error"],
        f" ({summarize_errors(replies)})" if counts["error"] else "",
    )
