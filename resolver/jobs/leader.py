"""Which replica runs the scheduled jobs: the one holding a PostgreSQL advisory lock.

Every replica runs a scheduler; a job whose run is shared work (re-signing, pruning...)
only does something on the leader (``scheduler._logged`` asks ``is_leader``). The lock is
session-level and held on a dedicated asyncpg connection outside the SQLAlchemy pool (a
pooled connection is recycled and reset, which would drop or leak the lock), so it lives
exactly as long as that connection: when the leader dies, PostgreSQL ends its session and
releases the lock, and the next replica to try (every ``[jobs] leader_check_seconds``) takes
over. The leader checks its connection as often; when the connection breaks or a check does
not answer within an interval, it stops leading at once and tries again on a new connection
two intervals later (so a follower takes over first). Two leaders at once are therefore
rare and short: jobs the old leader had already started, or at most one interval when
PostgreSQL ends a session whose client has not noticed yet (a network partition). So jobs
must stay safe to overlap, as the re-sign, prune and binding jobs are: they re-check what
is due under ``SKIP LOCKED`` row locks.

On SQLite (one machine, one process) the process is always the leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
from collections.abc import AsyncIterator
from typing import Any, Protocol

import asyncpg
from aiohttp import web
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from resolver.accounts.listener import asyncpg_dsn
from resolver.appkeys import JOB_LEADER, SETTINGS
from resolver.metrics import JOB_LEADER as JOB_LEADER_GAUGE

log = logging.getLogger(__name__)

#: The advisory lock key (a signed 64-bit int), derived like the pusher's per-account keys
#: so the two can never collide in practice.
LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"nats-iam-resolver:jobs-leader").digest()[:8], "big", signed=True
)
#: pg_locks shows a bigint advisory key as two unsigned 32-bit halves, with objsubid 1.
_LOCK_HALVES = ((LOCK_KEY >> 32) & 0xFFFFFFFF, LOCK_KEY & 0xFFFFFFFF)
#: The leader's connection carries this prefix in ``application_name``, so any replica
#: (and an operator in psql) can see who holds the lock.
APPLICATION_PREFIX = "nir-jobs "
#: How long start-up waits for the first attempt: a lone replica runs its jobs from the start.
FIRST_ATTEMPT_TIMEOUT = 5.0

_HOLDS_LOCK = """
SELECT EXISTS (
    SELECT 1 FROM pg_locks
    WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted
      AND classid = $1 AND objid = $2 AND objsubid = 1
)
"""

_LOCK_HOLDER = text(
    """
    SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.granted AND l.database = (
        SELECT oid FROM pg_database WHERE datname = current_database()
    ) AND l.classid = :classid AND l.objid = :objid AND l.objsubid = 1
    """
)


def replica_name() -> str:
    """This process among the replicas: ``hostname:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


class JobLeader(Protocol):
    #: How leadership is decided: ``single-process`` or ``postgresql-advisory-lock``.
    election: str

    @property
    def is_leader(self) -> bool: ...


class SingleProcessLeader:
    """SQLite: one process owns the database file, so it runs every job."""

    election = "single-process"

    @property
    def is_leader(self) -> bool:
        return True


class AdvisoryLockLeader:
    """Holds (or keeps trying for) the jobs advisory lock on a connection of its own."""

    election = "postgresql-advisory-lock"

    def __init__(self, dsn: str, *, check_seconds: float, replica: str | None = None) -> None:
        self._dsn = dsn
        self._every = check_seconds
        self.replica = replica or replica_name()
        self._leading = False
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        #: Set once the first attempt has been decided (won, lost or failed).
        self.decided = asyncio.Event()

    @property
    def is_leader(self) -> bool:
        return self._leading

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="jobs-leader")

    async def stop(self) -> None:
        """Stop trying; closing the connection releases the lock for the next replica."""
        if self._task is not None:
            self._stopping = True
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _set_leading(self, leading: bool, why: str) -> None:
        if leading == self._leading:
            return
        self._leading = leading
        JOB_LEADER_GAUGE.set(1 if leading else 0)
        if leading:
            log.info("this replica (%s) is now the job leader", self.replica)
        elif self._stopping:
            log.info("this replica (%s) hands over the job leadership: stopping", self.replica)
        else:
            log.warning("this replica (%s) is no longer the job leader: %s", self.replica, why)

    async def _run(self) -> None:
        while True:
            conn = None
            held = False
            try:
                conn = await asyncpg.connect(
                    self._dsn,
                    timeout=max(1.0, self._every),
                    server_settings={"application_name": (APPLICATION_PREFIX + self.replica)[:63]},
                )
                lost = asyncio.Event()
                conn.add_termination_listener(self._on_terminated(lost))
                while not lost.is_set():
                    await self._check(conn)
                    held = held or self._leading
                    self.decided.set()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._every):
                            await lost.wait()
                self._set_leading(False, "its database connection was lost")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the jobs wait; serving goes on
                self._set_leading(False, f"the lock check failed ({type(exc).__name__})")
                log.warning("job leader election cannot reach the database: %s", type(exc).__name__)
            finally:
                # Before anything else, so a replica stopping or cancelled never runs a job
                # it no longer holds the lock for.
                self._set_leading(False, "stopping")
                self.decided.set()
                if conn is not None and not conn.is_closed():
                    # terminate(), not close(): immediate, and a dead server cannot hold it up.
                    conn.terminate()
            # A leader that lost its connection waits two intervals, a follower one: the
            # followers, which try every interval, take over rather than a flapping leader.
            await asyncio.sleep(self._every * (2 if held else 1))

    def _on_terminated(self, lost: asyncio.Event) -> Any:
        def on_terminate(_conn: Any) -> None:
            # At once, not at the next check: the lock is gone with the session.
            self._set_leading(False, "its database connection was lost")
            lost.set()

        return on_terminate

    async def _check(self, conn: asyncpg.Connection) -> None:
        # A check that does not answer within an interval counts as a lost connection
        # (TimeoutError): another replica may hold the lock by the time it would.
        async with asyncio.timeout(self._every):
            if self._leading:
                if not await conn.fetchval(_HOLDS_LOCK, *_LOCK_HALVES):
                    self._set_leading(False, "the lock is no longer held")
            elif await conn.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY):
                self._set_leading(True, "acquired")


async def lock_holder(session: AsyncSession) -> str | None:
    """Who holds the jobs lock right now (``hostname:pid``), on PostgreSQL; None if nobody."""
    holder = await session.scalar(
        _LOCK_HOLDER, {"classid": _LOCK_HALVES[0], "objid": _LOCK_HALVES[1]}
    )
    if holder is None:
        return None
    return str(holder).removeprefix(APPLICATION_PREFIX)


async def leader_ctx(app: web.Application) -> AsyncIterator[None]:
    url = app[SETTINGS].database_url
    election: AdvisoryLockLeader | None = None
    if JOB_LEADER not in app:
        if url.startswith("postgresql"):
            election = AdvisoryLockLeader(
                asyncpg_dsn(url), check_seconds=app[SETTINGS].jobs.leader_check_seconds
            )
            app[JOB_LEADER] = election
        else:
            app[JOB_LEADER] = SingleProcessLeader()
            JOB_LEADER_GAUGE.set(1)
    if election is not None:
        election.start()
        try:
            async with asyncio.timeout(FIRST_ATTEMPT_TIMEOUT):
                await election.decided.wait()
        except TimeoutError:
            pass  # serve anyway; the jobs start once the lock is won
    yield
    if election is not None:
        await election.stop()


def setup(app: web.Application) -> None:
    """Register before the scheduler: its jobs stop before the lock is given up."""
    app.cleanup_ctx.append(leader_ctx)
