"""aiosqlite under SQLAlchemy with one thread round trip per statement instead of four.

SQLAlchemy's aiosqlite adapter asks aiosqlite's worker thread separately to make a cursor,
execute, fetch the rows and close the cursor: four hand-offs to the thread and back, each
one a wake-up of the event loop. Where the service runs on one core that is four context
switches per statement, and they cost far more than SQLite itself: a trivial SELECT took
~700 µs through the stock adapter against ~150 µs in one trip (bench/credentials.py shows
what it does to the credentials hot path). Here ``execute`` sends one function to the
thread that does all four and brings back the rows, description, rowcount and lastrowid.

It leans on two internals, both pinned in pyproject.toml: aiosqlite's ``Connection._execute``
(queue a function for its thread) and the shape of SQLAlchemy's ``AsyncAdapt_dbapi_cursor``.
tests/db/test_sqlite_driver.py checks what SQLAlchemy relies on (rows, rowcount, lastrowid,
RETURNING, executemany, errors, transactions).

``inline_statements()``: for a caller whose statements are few, small and indexed (the
credentials hot path), even one trip is too many. Within it, statements run on the event
loop's own thread. Only the write that opens a transaction may have to wait, for another
process's write lock, and SQLite's busy handler must not sleep on the loop: that write is
tried here with no busy wait, and if the lock is taken it goes to aiosqlite's thread to
wait. Nothing else can wait: WAL readers take no lock a writer holds, and once this
connection holds the write lock its writes and its commit wait for no one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import sqlite3
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.util.concurrency import await_

#: SQLite's busy timeout (set at connect by resolver.db.engine).
BUSY_TIMEOUT_MS = 10_000
#: As long as the busy timeout: a writer waits no longer here.
WRITER_WAIT_SECONDS = BUSY_TIMEOUT_MS / 1000
#: Statements before which sqlite3 (legacy transaction control) opens a transaction.
_OPENS_WRITE = re.compile(r"\s*(INSERT|UPDATE|DELETE|REPLACE)\b", re.IGNORECASE)
_NO_RESULT: tuple[Any, int, int | None, list[Any]] = (None, -1, None, [])
_INLINE: ContextVar[bool] = ContextVar("resolver_sqlite_inline", default=False)


@contextlib.contextmanager
def inline_statements() -> Iterator[None]:
    """Run this task's SQLite statements (and commit) on the event loop's thread; see the
    module docstring. Only for statements that take microseconds: a long one would stall
    every other request for its whole length. No effect on other databases."""
    token = _INLINE.set(True)
    try:
        yield
    finally:
        _INLINE.reset(token)


def _run(
    conn: sqlite3.Connection, operation: str, parameters: Any, many: bool
) -> tuple[Any, int, int | None, list[Any]]:
    # On aiosqlite's thread: everything the caller will ask of the cursor, in one go.
    cursor = conn.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        elif parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else []
        return description, cursor.rowcount, cursor.lastrowid, rows
    finally:
        cursor.close()


def _run_unless_busy(
    conn: sqlite3.Connection, operation: str, parameters: Any, many: bool, *, kept_off: bool
) -> tuple[Any, int, int | None, list[Any]] | None:
    """``_run`` for a write that opens a transaction, on the loop's thread, if the write
    lock is free; None (and no transaction left open) if another process holds it: then
    the caller waits for it on aiosqlite's thread, in the busy handler. ``kept_off``: the
    connection's busy timeout is 0 already (``OneTripConnection.keep_busy_wait_off``)."""
    if not kept_off:
        conn.execute("PRAGMA busy_timeout=0")
    try:
        return _run(conn, operation, parameters, many)
    except sqlite3.OperationalError as error:
        if error.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
            raise
        # sqlite3 opened a transaction before the write: end it, so that the retry starts
        # afresh (a WAL reader's stale snapshot could not be upgraded to a writer).
        conn.rollback()
        return None
    finally:
        if not kept_off:
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")


def _run_waiting(
    conn: sqlite3.Connection, operation: str, parameters: Any, many: bool
) -> tuple[Any, int, int | None, list[Any]]:
    """``_run`` on aiosqlite's thread for a connection whose busy timeout is kept at 0:
    there a statement may wait for another process's lock, as everywhere else."""
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    try:
        return _run(conn, operation, parameters, many)
    finally:
        conn.execute("PRAGMA busy_timeout=0")


class OneTripCursor(AsyncAdapt_aiosqlite_cursor):
    """A cursor whose results are fetched whole at execute (as the stock adapter does
    for every non-server-side cursor) and which holds no aiosqlite cursor open."""

    __slots__ = ("_done",)

    def __init__(self, adapt_connection: AsyncAdapt_aiosqlite_connection) -> None:
        # No super().__init__: that makes an aiosqlite cursor (one round trip) up front.
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._soft_closed_memoized = {}
        self._rows = collections.deque()
        self._done = _NO_RESULT

    @property
    def description(self) -> Any:
        return self._done[0]

    @property
    def rowcount(self) -> int:
        return self._done[1]

    @property
    def lastrowid(self) -> int:
        return self._done[2]  # type: ignore[return-value]

    @property
    def arraysize(self) -> int:
        return 1

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        pass

    async def _async_soft_close(self) -> None:
        return None  # nothing is held open: the rows were fetched at execute

    def close(self) -> None:
        self._rows.clear()

    def execute(self, operation: Any, parameters: Any = None) -> Any:
        try:
            return await_(self._trip(operation, parameters, many=False))
        except Exception as error:
            self._adapt_connection._handle_exception(error)

    def executemany(self, operation: Any, seq_of_parameters: Any) -> Any:
        try:
            return await_(self._trip(operation, seq_of_parameters, many=True))
        except Exception as error:
            self._adapt_connection._handle_exception(error)

    async def _trip(self, operation: Any, parameters: Any, *, many: bool) -> None:
        adapt: OneTripConnection = self._adapt_connection  # type: ignore[assignment]
        self._done = await adapt.run(operation, parameters, many=many)
        self._rows = collections.deque(self._done[3])

    def nextset(self) -> None:
        return None


class OneTripConnection(AsyncAdapt_aiosqlite_connection):
    """Also queues this process's writers on an asyncio lock (see ``take_writer``)."""

    __slots__ = ("_busy_wait_off", "_writer_held")
    _cursor_cls = OneTripCursor

    def __init__(self, dbapi: OneTripDBAPI, connection: aiosqlite.Connection) -> None:
        super().__init__(dbapi, connection)
        self._writer_held = False
        self._busy_wait_off = False

    def keep_busy_wait_off(self) -> None:
        """Keep SQLite's busy timeout at 0 on this connection until ``restore_busy_wait``,
        for a connection that runs its statements inline (the credentials issuer's).

        A write that opens a transaction inline tries without waiting and, if another
        process holds the lock, waits on aiosqlite's thread instead (``run``). It used to
        set the timeout to 0 and back around every such write: two more statements per
        request, and on a lone request each cost 50-120 µs of CPU (the VM leaves its caches
        cold between requests). Statements that go to the thread get the timeout back for
        their trip; an inline one that finds a lock fails at once instead of stalling the
        event loop in the busy handler."""
        self._connection._conn.execute("PRAGMA busy_timeout=0")
        self._busy_wait_off = True

    def restore_busy_wait(self) -> None:
        """Undo ``keep_busy_wait_off`` (before the connection goes back to the pool)."""
        self._connection._conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        self._busy_wait_off = False

    async def take_writer(self) -> None:
        """Wait for this process's other writers before opening a write transaction.

        SQLite has one writer; one that finds the lock taken sleeps in the busy handler,
        backing off up to 100 ms a try, whoever it waits for. Under a burst (credentials,
        the auth callout, a SCIM import) that turned 5 ms requests into 500 ms ones.
        Writers of this process take turns here instead, woken the moment the previous
        one commits; the busy handler is left to other processes (the CLI).
        """
        if not self._writer_held:
            try:
                async with asyncio.timeout(WRITER_WAIT_SECONDS):
                    await self.dbapi.writer.acquire()
            except TimeoutError:
                # What SQLite says when its own busy timeout runs out.
                raise sqlite3.OperationalError("database is locked") from None
            self._writer_held = True

    async def run(
        self, operation: str, parameters: Any = None, *, many: bool = False
    ) -> tuple[Any, int, int | None, list[Any]]:
        """Run one statement: (description, rowcount, lastrowid, rows). Inline on this
        thread within ``inline_statements()``, else in one trip to aiosqlite's thread; a
        write that opens a transaction first takes this process's writer turn."""
        connection: aiosqlite.Connection = self._connection  # type: ignore[assignment]
        raw = connection._conn
        opens_write = not raw.in_transaction and _OPENS_WRITE.match(operation) is not None
        if opens_write:
            await self.take_writer()
        try:
            # No trip pending on this connection (each is awaited), so the thread is idle
            # and the sqlite3 connection (check_same_thread=False) is ours.
            if not _INLINE.get():
                done = None
            elif opens_write:
                done = _run_unless_busy(
                    raw, operation, parameters, many, kept_off=self._busy_wait_off
                )
            else:
                done = _run(raw, operation, parameters, many)
            if done is None:
                work = _run_waiting if self._busy_wait_off else _run
                async with self._execute_mutex:
                    done = await connection._execute(work, raw, operation, parameters, many)
            return done
        finally:
            if not raw.in_transaction:
                self.release_writer()  # the write failed, or it did not open a transaction

    def data_version(self) -> int:
        """``PRAGMA data_version``, read straight from the sqlite3 connection (it waits for
        nothing and takes microseconds), which is idle: every trip is awaited."""
        return int(self._connection._conn.execute("PRAGMA data_version").fetchone()[0])

    def release_writer(self) -> None:
        if self._writer_held:
            self._writer_held = False
            self.dbapi.writer.release()

    # sqlite3 opens a transaction only before a write, so most commits (every read-only
    # request) and the pool's rollback at check-in find none: no trip for those. Only
    # this connection's own statements change that state, and none is running here.
    def commit(self) -> None:
        # Holds the write lock: a WAL commit waits for no one.
        self._end_transaction(self._connection._conn.commit, super().commit)

    def rollback(self) -> None:
        # Waits for no one either.
        self._end_transaction(self._connection._conn.rollback, super().rollback)

    def _end_transaction(self, inline: Callable[[], None], stock: Callable[[], None]) -> None:
        """End the open transaction, if any: ``inline`` (the sqlite3 call) within
        ``inline_statements()``, else ``stock`` (a trip to aiosqlite's thread)."""
        try:
            if self._connection._conn.in_transaction:
                if _INLINE.get():
                    try:
                        inline()
                    except Exception as error:
                        self._handle_exception(error)
                else:
                    stock()
        finally:
            self.release_writer()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.release_writer()

    def terminate(self) -> None:
        try:
            super().terminate()
        finally:
            self.release_writer()


class OneTripDBAPI(AsyncAdapt_aiosqlite_dbapi):
    """The DBAPI module SQLAlchemy's aiosqlite dialect is given (``module=``): one per
    engine, so one writer queue per database."""

    def __init__(self, aiosqlite_module: Any, sqlite_module: Any) -> None:
        super().__init__(aiosqlite_module, sqlite_module)
        self.writer = asyncio.Lock()

    def connect(self, *arg: Any, **kw: Any) -> OneTripConnection:
        stock = super().connect(*arg, **kw)
        return OneTripConnection(self, stock._connection)


async def one_trip_connection(conn: AsyncConnection) -> OneTripConnection | None:
    """The driver connection under ``conn`` if it is this module's; None on other
    databases (and on SQLite engines not made by resolver.db.engine)."""
    if conn.dialect.name != "sqlite":
        return None
    fairy = await conn.get_raw_connection()
    adapted = fairy.dbapi_connection
    return adapted if isinstance(adapted, OneTripConnection) else None


def one_trip_dbapi() -> OneTripDBAPI:
    return OneTripDBAPI(aiosqlite, sqlite3)
