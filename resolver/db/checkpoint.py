"""SQLite WAL checkpoints for the serving process, off the event loop.

In WAL mode SQLite copies the log back into the database file (a checkpoint) inside the
commit that takes the log past 1,000 pages, and with ``synchronous=NORMAL`` that is the one
place it calls fsync. The credentials hot path commits on the event loop's own thread
(``sqlite_driver.inline_statements``), so about one commit in a few hundred stalled every
request of the process for two fsyncs: 10-15 ms on the 2-core CI machine. The bare token
exchange of bench/exchange_floor.py (RS256 check, signature, two inserts, commit) had a p99
of 15 ms at 200 requests/s with SQLite's own checkpoints, and 6-7 ms with this.

So the serving engine turns auto-checkpoint off (``create_engine(...,
wal_autocheckpoint=False)``) and a job (resolver/jobs/wal_checkpoint.py) checkpoints once a
second on a pooled connection, that is on aiosqlite's thread, where sqlite3 lets go of the
GIL while it waits for the disk. Other processes (the CLI) keep SQLite's auto-checkpoint,
and the last connection to close checkpoints whatever is left.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine


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


async def checkpoint_wal(engine: AsyncEngine) -> WalCheckpoint | None:
    """One PASSIVE checkpoint of ``engine``'s SQLite database; None on another database."""
    if engine.dialect.name != "sqlite":
        return None
    async with engine.connect() as conn:
        # Not inside inline_statements(): this runs on aiosqlite's thread.
        row = (await conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")).one()
    return WalCheckpoint(int(row[0]), int(row[1]), int(row[2]))
