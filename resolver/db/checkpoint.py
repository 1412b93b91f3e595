"""SQLite WAL checkpoints for the serving process, off the event loop.

In WAL mode SQLite copies the log back into the database file (a checkpoint) inside the
commit that takes the log past 1,000 pages, and with ``synchronous=NORMAL`` that is the one
place it calls fsync. The credentials hot path commits on the event loop's own thread
(``sqlite_driver.inline_statements``), so about one commit in a few hundred stalled every
request of the process for two fsyncs: 10-15 ms on the 2-core CI machine. The bare token
exchange of bench/exchange_floor.py (RS256 check, signature, two inserts, commit) had a p99
of 15 ms at 200 requests/s with SQLite's own checkpoints, and 6-7 ms with this.

So the serving engine turns auto-checkpoint off (``create_engine(...,
wal_autocheckpoint=False)``) and ``WalCheckpointer`` checkpoints once a second on a pooled
connection, that is on aiosqlite's thread, where sqlite3 lets go of the GIL while it waits
for the disk. PASSIVE mode never waits for readers or writers; what it cannot copy this
time it copies next time. Other processes (the CLI) keep SQLite's auto-checkpoint, and the
last connection to close checkpoints whatever is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)

#: Seconds between checkpoints: at a few hundred commits a second the log stays a few MB.
CHECKPOINT_INTERVAL_SECONDS = 1.0


@dataclass(frozen=True)
class WalCheckpoint:
    """What ``PRAGMA wal_checkpoint(PASSIVE)`` answered, and when."""

    at: float
    #: 1 if a writer held the lock and the checkpoint could not run at all.
    busy: int
    #: Frames in the log, and how many of them are now in the database file.
    log_frames: int
    checkpointed_frames: int

    @property
    def is_complete(self) -> bool:
        """Everything in the log was in the database file after this checkpoint."""
        return not self.busy and self.checkpointed_frames == self.log_frames


async def checkpoint_wal(engine: AsyncEngine) -> WalCheckpoint | None:
    """One PASSIVE checkpoint of ``engine``'s SQLite database; None on another database."""
    if engine.dialect.name != "sqlite":
        return None
    async with engine.connect() as conn:
        # Not inside inline_statements(): this runs on aiosqlite's thread.
        row = (await conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")).one()
    return WalCheckpoint(time.time(), int(row[0]), int(row[1]), int(row[2]))


class WalCheckpointer:
    """Checkpoints ``engine`` every ``interval`` seconds until stopped (SQLite only)."""

    def __init__(self, engine: AsyncEngine, interval: float = CHECKPOINT_INTERVAL_SECONDS) -> None:
        self.engine = engine
        self.interval = interval
        #: The last checkpoint that ran, and how many runs failed.
        self.last: WalCheckpoint | None = None
        self.failures = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.engine.dialect.name == "sqlite" and self._task is None:
            self._task = asyncio.create_task(self._run(), name="wal-checkpoint")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.last = await checkpoint_wal(self.engine)
            except Exception as error:
                # A full disk or a locked file: tried again next time (the log only grows
                # meanwhile; nothing is lost), said at first and then every 60th time.
                self.failures += 1
                if self.failures % 60 == 1:
                    log.warning(
                        "WAL checkpoint failed (%d so far): %s",
                        self.failures,
                        getattr(error, "orig", error),
                    )
