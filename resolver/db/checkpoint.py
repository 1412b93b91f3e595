"""SQLite WAL checkpoints for the serving process, off the event loop.

In WAL mode SQLite copies the log back into the database file (a checkpoint) inside the
commit that takes the log past 1,000 pages, and with ``synchronous=NORMAL`` that is the one
place it calls fsync. The credentials hot path commits on the event loop's own thread
(``sqlite_driver.inline_statements``), so about one commit in a few hundred stalled every
request of the process for two fsyncs: 10-15 ms on the 2-core CI machine. The bare token
exchange of bench/exchange_floor.py (RS256 check, signature, two inserts, commit) had a p99
of 15 ms at 200 requests/s with SQLite's own checkpoints, and 6-7 ms with this.

So the serving engine turns auto-checkpoint off (``create_engine(...,
wal_autocheckpoint=False)``) and the service (resolver/jobs/wal_checkpoint.py) checkpoints
ten times a second with a ``WalCheckpointer``. Other processes (the CLI) keep SQLite's
auto-checkpoint, and the last connection to close checkpoints whatever is left.

Two more things the checkpointer does, both found with bench/credentials.py at 200
exchanges a second:

- It works on a thread of its own at the lowest CPU priority (nice 19), where sqlite3 lets
  go of the GIL while it copies pages and waits for the disk. The service is often given
  one core; a checkpoint's CPU (the copy, and the kernel's write-back inside fsync) then
  came out of the event loop's time, and the requests in flight at each checkpoint, once a
  second, were 5-15 ms late. Not SCHED_IDLE: under a saturating load that thread would
  never run, and the log would grow for as long as the load lasted.
- It keeps the log bounded. A writer starts the log over from its beginning only if it
  begins after a checkpoint that copied everything. Under steady load some commit always
  landed while the checkpoint ran (5-50 ms), so the log never started over and grew by
  9-14 MB a second at 200 exchanges a second, for as long as the load lasted. Once the
  log is past ``RESTART_FRAMES``, the checkpointer copies the few frames committed
  meanwhile again while it holds this process's writer turn (resolver.db.sqlite_driver), so
  the next commit starts the log over and writes it again from the start of the file.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from resolver.db.sqlite_driver import OneTripDBAPI

log = logging.getLogger(__name__)

#: Frames (pages) in the log past which a checkpoint makes sure the log starts over: 256 MiB
#: at SQLite's 4 KiB pages, about 20 s of 200 exchanges a second without a pause. Below it
#: the log starts over whenever the writes pause for as long as a checkpoint takes. Not
#: lower: this process's writers wait while that copy runs, and its two fsyncs took 15-40 ms
#: on the 2-core VM however few frames there were. The log file keeps this size and is
#: written over from its start (see resolver.db.engine.WAL_SIZE_LIMIT_BYTES).
RESTART_FRAMES = 65_536

#: How long the checkpointer waits for this process's writer turn before it leaves the
#: restart to the next run: a long write transaction is not worth stalling behind.
WRITER_TURN_WAIT_SECONDS = 1.0

#: Niceness of the checkpoint thread: the lowest priority that still runs under full load.
NICENESS = 19


@dataclass(frozen=True)
class WalCheckpoint:
    """What ``PRAGMA wal_checkpoint(PASSIVE)`` answered."""

    #: 1 if a writer held the lock and the checkpoint could not run at all.
    busy: int
    #: Frames in the log, and how many of them are now in the database file.
    log_frames: int
    checkpointed_frames: int

    @property
    def is_complete(self) -> bool:
        """Everything in the log was in the database file after this checkpoint."""
        return not self.busy and self.checkpointed_frames == self.log_frames


def _lower_this_threads_priority() -> None:
    # On Linux the niceness belongs to the thread (its native id), not the whole process.
    if hasattr(os, "setpriority") and hasattr(threading, "get_native_id"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICENESS)
        except OSError:
            log.warning("could not lower the WAL checkpoint thread's priority")


class WalCheckpointer:
    """PASSIVE checkpoints of one SQLite database on a low-priority thread of its own, with
    a connection of its own (not the pool's: a pooled connection's thread also serves
    requests, and its priority could not be raised back without privilege)."""

    def __init__(self, engine: AsyncEngine, *, restart_frames: int = RESTART_FRAMES) -> None:
        if engine.dialect.name != "sqlite" or not engine.url.database:
            raise ValueError("a WAL checkpointer needs an SQLite database file")
        self._path = engine.url.database
        dbapi = engine.sync_engine.dialect.dbapi
        self._writer: asyncio.Lock | None = (
            dbapi.writer if isinstance(dbapi, OneTripDBAPI) else None
        )
        self.restart_frames = restart_frames
        self._thread = ThreadPoolExecutor(
            1, thread_name_prefix="wal-checkpoint", initializer=_lower_this_threads_priority
        )
        self._connection: sqlite3.Connection | None = None
        # Its connection serves one checkpoint at a time, whichever thread runs it.
        self._one_at_a_time = asyncio.Lock()
        self.thread_id: int | None = None  # the checkpoint thread's native id, once it ran
        #: The error the last checkpoint failed with, if it did (the job reports changes).
        self.failing: str | None = None

    def _checkpoint_here(self) -> WalCheckpoint:
        """One PASSIVE checkpoint on the calling thread (only one runs at a time)."""
        if self._connection is None:
            # Autocommit: a checkpoint cannot run inside a transaction.
            self._connection = sqlite3.connect(
                self._path, isolation_level=None, check_same_thread=False
            )
        row = self._connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return WalCheckpoint(int(row[0]), int(row[1]), int(row[2]))

    def _on_low_priority_thread(self) -> WalCheckpoint:
        self.thread_id = threading.get_native_id()
        return self._checkpoint_here()

    async def _passive(self) -> WalCheckpoint:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._on_low_priority_thread)

    async def checkpoint(self) -> WalCheckpoint:
        """Copy the log into the database file; past ``restart_frames``, also make sure the
        next commit starts the log over."""
        async with self._one_at_a_time:
            return await self._checkpoint()

    async def _checkpoint(self) -> WalCheckpoint:
        done = await self._passive()
        if done.busy or done.log_frames <= self.restart_frames or self._writer is None:
            return done
        try:
            async with asyncio.timeout(WRITER_TURN_WAIT_SECONDS):
                await self._writer.acquire()
        except TimeoutError:
            return done  # a long write transaction: next time
        try:
            # No commit of this process can land now, so this copies everything (unless
            # another process writes). It runs at normal priority: writers are waiting.
            return await asyncio.to_thread(self._checkpoint_here)
        finally:
            self._writer.release()

    def close(self) -> None:
        """Stop the thread and close the connection (the thread may be mid-checkpoint)."""
        self._thread.shutdown(wait=True)
        if self._connection is not None:
            self._connection.close()
            self._connection = None
