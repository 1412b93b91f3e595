"""The one-trip aiosqlite adapter (resolver.db.sqlite_driver) does what SQLAlchemy expects
of a DBAPI cursor, and this process's writers take turns instead of sleeping in SQLite."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    event,
    exc,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from resolver.db import sqlite_driver
from resolver.db.engine import create_engine

metadata = MetaData()
things = Table(
    "things",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(50), unique=True, nullable=False),
)


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'driver.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    yield engine
    await engine.dispose()


async def test_the_engine_uses_the_one_trip_adapter(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        assert isinstance(raw.dbapi_connection, sqlite_driver.OneTripConnection)


async def test_rows_rowcount_lastrowid_and_returning(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        result = await conn.execute(insert(things).values(name="a"))
        assert result.inserted_primary_key == (1,)
        assert result.lastrowid == 1
        returned = await conn.execute(insert(things).values(name="b").returning(things.c.id))
        assert returned.scalar_one() == 2
        await conn.execute(insert(things), [{"name": f"n{i}"} for i in range(300)])
        changed = await conn.execute(
            update(things).where(things.c.name.like("n%")).values(name=things.c.name + "x")
        )
        assert changed.rowcount == 300
        rows = (await conn.execute(select(things.c.name).order_by(things.c.id))).scalars().all()
        assert rows[:3] == ["a", "b", "n0x"] and len(rows) == 302
        # executemany at the driver (what SQLAlchemy uses for plain many-row DML)
        await conn.exec_driver_sql("INSERT INTO things (name) VALUES (?)", [("m1",), ("m2",)])
        count = await conn.execute(select(things.c.id).where(things.c.name.in_(["m1", "m2"])))
        assert len(count.all()) == 2
        # a result read after others ran on the same connection keeps its own rows
        first = await conn.execute(select(things.c.name).where(things.c.id == 1))
        await conn.execute(select(things.c.name).where(things.c.id == 2))
        assert first.scalar_one() == "a"


async def test_streamed_results_use_a_server_side_cursor(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(insert(things), [{"name": f"s{i}"} for i in range(50)])
    async with engine.connect() as conn:
        stream = await conn.stream(select(things.c.name).order_by(things.c.id))
        names = [row[0] async for row in stream]
    assert names == [f"s{i}" for i in range(50)]


async def test_errors_are_sqlalchemys_and_leave_the_writer_free(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(insert(things).values(name="dup"))
    with pytest.raises(exc.IntegrityError):
        async with engine.begin() as conn:
            await conn.execute(insert(things).values(name="other"))
            await conn.execute(insert(things).values(name="dup"))
    # the failed transaction was rolled back and released the writer: a write goes through
    async with asyncio.timeout(2), engine.begin() as conn:
        await conn.execute(insert(things).values(name="after"))
    async with engine.connect() as conn:
        names = set((await conn.execute(select(things.c.name))).scalars())
    assert names == {"dup", "after"}


async def test_writers_take_turns_and_are_woken_when_the_first_commits(
    engine: AsyncEngine,
) -> None:
    order: list[str] = []
    first_wrote = asyncio.Event()

    async def first() -> None:
        async with engine.begin() as conn:
            await conn.execute(insert(things).values(name="first"))
            first_wrote.set()
            await asyncio.sleep(0.35)  # holds the write transaction open
            order.append("first commits")

    async def second() -> float:
        await first_wrote.wait()
        started = time.monotonic()
        async with engine.begin() as conn:
            await conn.execute(insert(things).values(name="second"))
            order.append("second wrote")
        return time.monotonic() - started

    _, waited = await asyncio.gather(first(), second())
    assert order == ["first commits", "second wrote"]
    # Woken by the commit (~0.35 s), not by SQLite's busy handler, whose back-off
    # (1, 2, 5 ... 100 ms) would wake it at 0.428 s at the earliest.
    assert 0.3 < waited < 0.4


async def test_a_reader_does_not_wait_for_a_writer(engine: AsyncEngine) -> None:
    async with engine.begin() as writer:
        await writer.execute(insert(things).values(name="pending"))
        async with asyncio.timeout(2), engine.connect() as reader:
            seen = (await reader.execute(select(things.c.name))).scalars().all()
    assert seen == []  # WAL: the reader sees the last commit, without waiting


async def test_a_writer_waits_no_longer_than_the_busy_timeout(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_driver, "WRITER_WAIT_SECONDS", 0.2)
    async with engine.begin() as holder:
        await holder.execute(insert(things).values(name="held"))
        with pytest.raises(exc.OperationalError, match="database is locked"):
            async with engine.begin() as conn:
                await conn.execute(insert(things).values(name="late"))
    async with engine.begin() as conn:  # and nothing stays taken afterwards
        await conn.execute(insert(things).values(name="later"))


@pytest.fixture
async def traced(engine: AsyncEngine) -> AsyncEngine:
    """``engine`` with tid(): the id of the thread running a statement, as SQLite sees it."""

    @event.listens_for(engine.sync_engine, "connect")
    def _register(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection._connection._conn.create_function("tid", 0, threading.get_ident)

    await engine.dispose()  # connections made from now on have tid()
    return engine


async def test_inline_statements_run_on_the_loop(traced: AsyncEngine) -> None:
    here = threading.get_ident()
    async with traced.connect() as conn:
        assert (await conn.execute(text("SELECT tid()"))).scalar() != here
    with sqlite_driver.inline_statements():
        async with traced.begin() as conn:
            assert (await conn.execute(text("SELECT tid()"))).scalar() == here
            # The write lock is free: the write that takes it runs here too.
            await conn.execute(text("INSERT INTO things (name) VALUES (tid())"))
            await conn.execute(text("INSERT INTO things (name) VALUES (tid() || 'b')"))
        async with traced.connect() as conn:
            names = (await conn.execute(text("SELECT name FROM things"))).scalars().all()
            # The busy timeout is back after the write that tried without it.
            timeout = (await conn.execute(text("PRAGMA busy_timeout"))).scalar()
    assert names == [str(here), f"{here}b"]  # both committed
    assert timeout == sqlite_driver.BUSY_TIMEOUT_MS


async def test_an_inline_writer_waits_for_another_process_without_stalling_the_loop(
    traced: AsyncEngine, tmp_path: Path
) -> None:
    here = threading.get_ident()
    # Another process, as SQLite sees it, holding the write lock for 0.4 s.
    other = sqlite3.connect(tmp_path / "driver.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    asyncio.get_running_loop().call_later(0.4, other.rollback)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    started = time.monotonic()
    try:
        with sqlite_driver.inline_statements():
            async with traced.begin() as conn:
                # The lock is taken: this write waits in the busy handler, on aiosqlite's
                # thread; once it holds the lock, the next write runs here.
                await conn.execute(text("INSERT INTO things (name) VALUES (tid())"))
                await conn.execute(text("INSERT INTO things (name) VALUES (tid() || 'b')"))
        waited = time.monotonic() - started
    finally:
        ticker.cancel()
        other.close()
    async with traced.connect() as conn:
        opening, after = (await conn.execute(text("SELECT name FROM things"))).scalars()
    assert waited >= 0.35
    # The loop kept running while the write waited (a stall would leave ~0 ticks).
    assert ticks >= 15
    assert int(opening) != here and after == f"{here}b"


async def test_a_connection_kept_without_busy_wait_still_waits_on_the_thread(
    traced: AsyncEngine, tmp_path: Path
) -> None:
    """``keep_busy_wait_off`` (the credentials issuer's connection): no PRAGMA around each
    inline write, and a write that finds another process's lock still waits for it, on
    aiosqlite's thread, with the busy timeout back for that trip only."""
    here = threading.get_ident()
    other = sqlite3.connect(tmp_path / "driver.db", isolation_level=None)
    async with traced.connect() as conn:
        driver = await sqlite_driver.one_trip_connection(conn)
        assert driver is not None
        driver.keep_busy_wait_off()

        def busy_timeout() -> int:  # read as an inline statement sees it
            return int(driver._connection._conn.execute("PRAGMA busy_timeout").fetchone()[0])

        timeouts = [busy_timeout()]
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock for 0.4 s
        asyncio.get_running_loop().call_later(0.4, other.rollback)
        started = time.monotonic()
        try:
            with sqlite_driver.inline_statements():
                await conn.execute(text("INSERT INTO things (name) VALUES (tid())"))
                await conn.commit()
                waited = time.monotonic() - started
                # The lock is free now: this one runs here, without a PRAGMA around it.
                await conn.execute(text("INSERT INTO things (name) VALUES (tid() || 'b')"))
                await conn.commit()
        finally:
            other.close()
        timeouts.append(busy_timeout())
        driver.restore_busy_wait()
        timeouts.append(busy_timeout())
        names = (await conn.execute(text("SELECT name FROM things"))).scalars().all()
    assert waited >= 0.35
    assert int(names[0]) != here and names[1] == f"{here}b"
    assert timeouts == [0, 0, sqlite_driver.BUSY_TIMEOUT_MS]
