"""The async engine and session factory (built only by ``app.py`` and the CLI)."""

from __future__ import annotations

from functools import partial
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from resolver.db.sqlite_driver import BUSY_TIMEOUT_MS, one_trip_dbapi

#: What SQLite trims the write-ahead log file to when the log starts over. SQLite trims it
#: inside the commit that starts the log over, which on the credentials path runs on the
#: event loop: trimming 530 MB there took 0.5 s on the 2-core VM, a stall of every request.
#: So the limit is twice the log the checkpointer lets grow under steady writes
#: (resolver.db.checkpoint.RESTART_FRAMES, 256 MiB): that file is written over in place, and
#: only a log that grew past it (a reader that held one snapshot for minutes) is trimmed.
WAL_SIZE_LIMIT_BYTES = 512 * 1024 * 1024


def _sqlite_pragmas(dbapi_connection: Any, _record: Any, *, wal_autocheckpoint: bool) -> None:
    # SQLite ignores foreign keys unless asked per connection, and WAL lets readers (the
    # nats-server fetching JWTs) run while a SCIM write is in progress.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    if not wal_autocheckpoint:
        cursor.execute("PRAGMA wal_autocheckpoint=0")  # see resolver.db.checkpoint
    # The log file keeps its largest size after it starts over unless told otherwise; a
    # log that grew without bound once would leave that much disk taken for good.
    cursor.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
    cursor.close()


def create_engine(url: str, *, echo: bool = False, wal_autocheckpoint: bool = True) -> AsyncEngine:
    """An engine for ``url`` with the per-backend settings this service relies on.

    ``wal_autocheckpoint=False`` (SQLite): commits never checkpoint; the caller must
    (the serving app does, in the job of resolver/jobs/wal_checkpoint.py).
    """
    kwargs: dict[str, Any] = {"echo": echo}
    if url.startswith("postgresql"):
        kwargs.update(pool_size=10, max_overflow=10, pool_pre_ping=True)
    if url.startswith("sqlite+aiosqlite"):
        # aiosqlite, with one thread round trip per statement (see sqlite_driver).
        kwargs["module"] = one_trip_dbapi()
        # inline_statements() uses the connection from the event loop's thread too, one
        # statement at a time (sqlite3 itself is built thread-safe).
        kwargs["connect_args"] = {"check_same_thread": False}
    engine = create_async_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        pragmas = partial(_sqlite_pragmas, wal_autocheckpoint=wal_autocheckpoint)
        event.listen(engine.sync_engine, "connect", pragmas)
    return engine


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    # expire_on_commit=False: handlers read attributes after the commit they own.
    return async_sessionmaker(engine, expire_on_commit=False)
