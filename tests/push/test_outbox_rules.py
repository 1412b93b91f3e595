"""Outbox rules without a server: a recording transport stands in for NATS.

Newest per account wins, failures back off, errors are recorded, two pushers on one
PostgreSQL database never push one account at once, and the status view's summary.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from resolver.db.engine import create_sessionmaker
from resolver.db.models import AuditEntry, PushOutbox, utcnow
from resolver.push.connection import (
    PushRejectedError,
    PushUnavailableError,
    ServerReply,
    parse_reply,
)
from resolver.push.outbox import enqueue_push
from resolver.push.pusher import Pusher, backoff_seconds, prune_finished
from resolver.push.status import push_status

A = "A" + "B" * 55
B = "A" + "C" * 55


def _reply(server: str, subject: str, message: str = "jwt updated", code: int = 200) -> ServerReply:
    return ServerReply(server, f"N{server.upper()}", subject, code, message)


class RecordingTransport:
    """Answers like one URL-resolver server, or fails, and remembers what it was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self.fail: str | None = None
        self.reject: str | None = None
        self.replies: list[ServerReply] | None = None
        self.active: set[str] = set()
        self.overlaps = 0
        self.delay = 0.0

    async def push_claims(self, account_key: str, jwt: str, gather_for: float) -> list[ServerReply]:
        if self.fail is not None:
            raise PushUnavailableError(self.fail)
        if self.reject is not None:
            raise PushRejectedError(self.reject)
        if account_key in self.active:
            self.overlaps += 1
        self.active.add(account_key)
        try:
            await asyncio.sleep(self.delay)
            self.sent.append((account_key, jwt))
        finally:
            self.active.discard(account_key)
        if self.replies is not None:
            return self.replies
        return [_reply("n1", f"$SYS.REQ.ACCOUNT.{account_key}.CLAIMS.UPDATE")]


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return create_sessionmaker(engine)


def _pusher(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine, transport: Any
) -> Pusher:
    return Pusher(sessions, transport, timeout=0.01, row_locks=engine.dialect.name == "postgresql")


async def _queue(sessions: async_sessionmaker[AsyncSession], *items: tuple[str, str]) -> None:
    async with sessions() as session, session.begin():
        for account_key, jwt in items:
            enqueue_push(session, account_key, jwt, f"jti-{jwt}")


async def _push_audit(sessions: async_sessionmaker[AsyncSession]) -> list[AuditEntry]:
    async with sessions() as session:
        query = select(AuditEntry).where(AuditEntry.action.like("push.%"))
        return list(await session.scalars(query.order_by(AuditEntry.id)))


async def _rows(sessions: async_sessionmaker[AsyncSession]) -> list[PushOutbox]:
    async with sessions() as session:
        return list(await session.scalars(select(PushOutbox).order_by(PushOutbox.id)))


async def test_newest_row_per_account_is_pushed_and_older_ones_superseded(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    transport = RecordingTransport()
    pusher = _pusher(sessions, engine, transport)
    await _queue(sessions, (A, "a1"), (B, "b1"), (A, "a2"), (A, "a3"))

    assert await pusher.run_once() == 2
    assert sorted(transport.sent) == [(A, "a3"), (B, "b1")]
    rows = await _rows(sessions)
    assert [(r.jwt, r.status) for r in rows] == [
        ("a1", "superseded"),
        ("b1", "done"),
        ("a2", "superseded"),
        ("a3", "done"),
    ]
    assert rows[3].results == [
        {
            "server": "n1",
            "id": "NN1",
            "subject": f"$SYS.REQ.ACCOUNT.{A}.CLAIMS.UPDATE",
            "code": 200,
            "result": "updated",
            "message": "jwt updated",
        }
    ]
    assert await pusher.run_once() == 0


async def test_failures_back_off_exponentially_and_stay_pending(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    transport = RecordingTransport()
    transport.fail = "not connected to NATS"
    pusher = _pusher(sessions, engine, transport)
    await _queue(sessions, (A, "a1"))

    assert await pusher.run_once() == 1
    [row] = await _rows(sessions)
    assert (row.status, row.attempts, row.last_error) == ("pending", 1, "not connected to NATS")
    first_due = row.next_attempt_at
    assert timedelta(seconds=0.4) < first_due - utcnow() <= timedelta(seconds=0.5)
    assert await pusher.run_once() == 0  # not due yet
    # Reconnected: everything pending goes now, back-off or not.
    assert await pusher.run_once(ignore_backoff=True) == 1
    [row] = await _rows(sessions)
    assert row.attempts == 2 and row.next_attempt_at - utcnow() > timedelta(seconds=0.9)

    transport.fail = None
    assert await pusher.run_once(ignore_backoff=True) == 1
    [row] = await _rows(sessions)
    assert (row.status, row.attempts, row.last_error) == ("done", 3, None)
    # Audited: the first failure (not every retry of it), then the delivery.
    audited = await _push_audit(sessions)
    assert [(e.action, e.actor, e.account_key, e.target) for e in audited] == [
        ("push.retry", "system", A, A),
        ("push.done", "system", A, A),
    ]
    assert audited[0].details == {"jti": "jti-a1", "attempts": 1, "error": "not connected to NATS"}
    assert audited[1].details == {
        "jti": "jti-a1",
        "attempts": 3,
        "servers": [{"server": "n1", "code": 200, "result": "updated"}],
        "errors": None,
    }
    assert [backoff_seconds(n, base=0.5, cap=30) for n in (1, 2, 3, 7, 8, 20)] == [
        0.5,
        1,
        2,
        30,
        30,
        30,
    ]


async def test_no_reply_is_a_failure_and_error_replies_are_recorded(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    transport = RecordingTransport()
    pusher = _pusher(sessions, engine, transport)
    transport.replies = []
    await _queue(sessions, (A, "a1"))
    await pusher.run_once()
    [row] = await _rows(sessions)
    assert row.status == "pending" and "no nats-server answered" in (row.last_error or "")

    transport.replies = [
        _reply("n1", "$SYS.REQ.CLAIMS.UPDATE", "jwt update skipped"),
        _reply("n2", "$SYS.REQ.CLAIMS.UPDATE", "account validation failed", 500),
    ]
    await pusher.run_once(ignore_backoff=True)
    [row] = await _rows(sessions)
    # Servers answered: done (retrying would not change their minds), errors kept.
    assert row.status == "done"
    assert row.last_error == "1 of 2 replies were errors: n2: account validation failed"
    assert [r["result"] for r in row.results] == ["skipped", "error"]


async def test_a_jwt_too_big_to_send_is_marked_failed_not_retried(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    transport = RecordingTransport()
    transport.reject = "the JWT (2000000 bytes) exceeds the server's max_payload"
    pusher = _pusher(sessions, engine, transport)
    await _queue(sessions, (A, "a1"))
    assert await pusher.run_once() == 1
    [row] = await _rows(sessions)
    assert (row.status, row.attempts) == ("failed", 1) and "max_payload" in (row.last_error or "")
    assert await pusher.run_once(ignore_backoff=True) == 0
    [audited] = await _push_audit(sessions)
    assert (audited.action, audited.account_key) == ("push.failed", A)
    assert "max_payload" in audited.details["error"]


@pytest.mark.postgres
async def test_two_pushers_on_postgresql_never_push_one_account_at_once(
    postgres_url: str,
) -> None:
    from resolver.db import migrate
    from resolver.db.engine import create_engine

    engine = create_engine(postgres_url)
    try:
        await migrate.upgrade(engine)
        sessions = create_sessionmaker(engine)
        transport = RecordingTransport()
        transport.delay = 0.02
        first, second = (_pusher(sessions, engine, transport) for _ in range(2))
        keys = [f"A{chr(ord('A') + n) * 55}" for n in range(6)]
        for version in range(0, 10, 2):
            # Two versions per account per round: the older one must be superseded.
            for v in (version, version + 1):
                await _queue(sessions, *((key, f"{key[:2]}-{v}") for key in keys))
            await asyncio.gather(first.run_once(), second.run_once())
        while await first.run_once() + await second.run_once():
            pass
        assert transport.overlaps == 0
        for key in keys:
            versions = [int(jwt.split("-")[1]) for k, jwt in transport.sent if k == key]
            assert versions == sorted(versions) and versions[-1] == 9, (key, versions)
        rows = await _rows(sessions)
        assert {r.status for r in rows} == {"done", "superseded"}
        assert sum(r.status == "done" for r in rows) == len(transport.sent)
    finally:
        await engine.dispose()


async def test_status_shows_pending_rows_and_each_servers_last_answer(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    transport = RecordingTransport()
    pusher = _pusher(sessions, engine, transport)
    transport.replies = [
        _reply("n1", "$SYS.REQ.CLAIMS.UPDATE", "jwt update skipped"),
        _reply("n1", f"$SYS.REQ.ACCOUNT.{A}.CLAIMS.UPDATE", "jwt updated"),
        _reply("n2", f"$SYS.REQ.ACCOUNT.{A}.CLAIMS.UPDATE", "jwt update skipped"),
    ]
    await _queue(sessions, (A, "a1"))
    await pusher.run_once()
    transport.replies = [_reply("n2", f"$SYS.REQ.ACCOUNT.{B}.CLAIMS.UPDATE", "jwt updated")]
    await _queue(sessions, (B, "b1"))
    await pusher.run_once()
    transport.fail = "not connected to NATS"
    await _queue(sessions, (A, "a2"))
    await pusher.run_once()

    async with sessions() as session:
        status = await push_status(session)
    assert status["pending_count"] == 1
    [pending] = status["pending"]
    assert pending["account"] == A and pending["jti"] == "jti-a2" and pending["attempts"] == 1
    assert pending["last_error"] == "not connected to NATS"
    n1, n2 = status["servers"]
    # n1's newest answer is for A, the account subject's one; n2's newest is for B.
    assert (n1["server"], n1["account"], n1["message"]) == ("n1", A, "jwt updated")
    assert (n2["server"], n2["account"], n2["message"]) == ("n2", B, "jwt updated")


async def test_prune_deletes_only_old_finished_rows(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    pusher = _pusher(sessions, engine, RecordingTransport())
    await _queue(sessions, (A, "a1"), (A, "a2"))
    await pusher.run_once()
    await _queue(sessions, (B, "b1"))
    async with sessions() as session, session.begin():
        await prune_finished(session, before=utcnow() + timedelta(seconds=1))
    assert [(r.jwt, r.status) for r in await _rows(sessions)] == [("b1", "pending")]


def test_parse_reply_reads_both_shapes_and_ignores_the_rest() -> None:
    ok = parse_reply(
        "s",
        b'{"server":{"name":"n1","id":"NID"},"data":{"account":"A","code":200,'
        b'"message":"jwt updated"}}',
    )
    assert ok == ServerReply("n1", "NID", "s", 200, "jwt updated") and ok.result == "updated"
    err = parse_reply(
        "s",
        b'{"server":{"name":"n1","id":"NID"},"error":{"account":"A","code":500,'
        b'"description":"subject does not match jwt content"}}',
    )
    assert err is not None and err.result == "error" and err.code == 500
    assert err.message == "subject does not match jwt content"
    assert parse_reply("s", b"") is None  # a no-responders status message
    assert parse_reply("s", b"not json") is None
    assert parse_reply("s", b'{"data":{}}') is None
