"""WAL checkpoints: never inside a commit of the serving engine, always by the checkpointer."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from resolver.app import create_app
from resolver.appkeys import ENGINE, WAL_CHECKPOINTER
from resolver.config import Settings
from resolver.db import checkpoint, sqlite_driver
from resolver.db.checkpoint import NICENESS, WalCheckpoint, WalCheckpointer
from resolver.db.engine import WAL_SIZE_LIMIT_BYTES, create_engine
from resolver.db.sqlite_driver import BUSY_TIMEOUT_MS
from resolver.jobs import wal_checkpoint
from resolver.jobs.scheduler import JOBS
from resolver.jobs.wal_checkpoint import EVERY_SECONDS
from tests.push.conftest import wait_for

#: Written in commits of 64 KiB: 2,000 pages of 4 KiB, twice SQLite's auto-checkpoint mark.
BYTES = 8 * 1024 * 1024
CHUNK = 64 * 1024


async def write_on_the_loop(engine: AsyncEngine) -> None:
    """What the credentials hot path does: commits made on the event loop's thread."""
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE IF NOT EXISTS ballast (b BLOB)"))
    with sqlite_driver.inline_statements():
        for _ in range(BYTES // CHUNK):
            async with engine.begin() as conn:
                await conn.execute(
                    text("INSERT INTO ballast VALUES (:b)"), {"b": os.urandom(CHUNK)}
                )


@pytest.mark.parametrize("autocheckpoint", [True, False], ids=["sqlite-default", "serving"])
async def test_the_serving_engine_leaves_the_log_to_the_checkpointer(
    tmp_path: Path, autocheckpoint: bool
) -> None:
    engine = create_engine(
        f"sqlite+aiosqlite:///{tmp_path / 'wal.db'}", wal_autocheckpoint=autocheckpoint
    )
    checkpointer = WalCheckpointer(engine)
    try:
        await write_on_the_loop(engine)
        done = await checkpointer.checkpoint()
    finally:
        await asyncio.to_thread(checkpointer.close)
        await engine.dispose()
    assert done.is_complete  # everything is in the database file now, whoever copied it
    if autocheckpoint:
        # SQLite's own: the commits checkpointed (and restarted the log) on the way.
        assert done.log_frames < 1_100
    else:
        # Not one commit checkpointed: the whole write was still in the log.
        assert done.log_frames > BYTES // 4096


def checkpoints(result: str) -> float:
    return REGISTRY.get_sample_value("nir_wal_checkpoints_total", {"result": result}) or 0.0


async def test_the_app_checkpoints_the_log_several_times_on_its_own(
    settings: Settings, engine: AsyncEngine, aiohttp_client: Any
) -> None:
    app = create_app(settings)
    # Paced by itself, not by the scheduler (wal_checkpoint says why).
    assert "wal_checkpoint" not in {spec.name for spec in app[JOBS]}
    client = await aiohttp_client(app)
    if engine.dialect.name != "sqlite":
        assert WAL_CHECKPOINTER not in client.app  # PostgreSQL has no such log to copy
        return
    before_ok = checkpoints("ok")
    app_engine = client.app[ENGINE]
    async with app_engine.connect() as conn:
        assert (await conn.exec_driver_sql("PRAGMA wal_autocheckpoint")).scalar() == 0
        limit = (await conn.exec_driver_sql("PRAGMA journal_size_limit")).scalar()
        assert limit == WAL_SIZE_LIMIT_BYTES
    database = Path(app_engine.url.database or "")

    def size() -> int:
        return database.stat().st_size

    before = await asyncio.to_thread(size)
    await write_on_the_loop(app_engine)

    async def copied() -> bool:
        # Only a checkpoint writes the log's pages into the file; the last page comes last.
        return await asyncio.to_thread(size) >= before + BYTES

    await wait_for(copied, within=5.0, what="a checkpoint of the log")

    async def repeated() -> bool:
        return checkpoints("ok") >= before_ok + 3

    await wait_for(repeated, within=5.0, what="more checkpoints")
    # The last commits are still in the log (nothing wrote after them to start it over).
    assert (REGISTRY.get_sample_value("nir_wal_log_frames") or 0.0) > 0


async def commit_one(engine: AsyncEngine) -> None:
    """One small commit through the engine: it takes the writer turn, as the service does."""
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO ballast VALUES (:b)"), {"b": os.urandom(64)})


def test_a_log_of_the_restart_size_is_written_over_in_place_not_trimmed() -> None:
    # SQLite trims the log file inside the commit that starts the log over, on the event
    # loop: 0.5 s for 530 MB on the 2-core VM. A log the checkpointer restarts (its frames,
    # each with a 24-byte header, plus those committed while the first copy ran) must stay
    # under the limit, with room to spare, or every restart under load stalls the service.
    # The service's pages are SQLite's default 4 KiB.
    assert checkpoint.RESTART_FRAMES * (4096 + 24) * 1.5 < WAL_SIZE_LIMIT_BYTES


@pytest.mark.parametrize("restart_frames", [100, 10**9], ids=["past-the-mark", "below-it"])
async def test_a_long_log_starts_over_though_commits_never_pause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restart_frames: int
) -> None:
    """Under steady load some commit lands while the checkpoint copies, so the copy is never
    complete when the next writer begins, and only a complete one lets it start the log
    over. Here a reader's snapshot stands for that commit: the copy stops short of it."""
    path = tmp_path / "wal.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}", wal_autocheckpoint=False)
    checkpointer = WalCheckpointer(engine, restart_frames=restart_frames)
    reader = sqlite3.connect(path, isolation_level=None)
    try:
        await write_on_the_loop(engine)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM ballast").fetchone()  # holds this snapshot
        await commit_one(engine)  # after the reader's snapshot: not copied while it reads
        passive = checkpointer._passive

        async def while_the_reader_reads() -> WalCheckpoint:
            done = await passive()
            reader.execute("COMMIT")
            return done

        monkeypatch.setattr(checkpointer, "_passive", while_the_reader_reads)
        done = await checkpointer.checkpoint()
        await commit_one(engine)  # starts the log over, if the whole log was copied
        monkeypatch.setattr(checkpointer, "_passive", passive)
        after = await checkpointer.checkpoint()
    finally:
        reader.close()
        await asyncio.to_thread(checkpointer.close)
        await engine.dispose()
    frames_written = BYTES // 4096
    assert done.log_frames > frames_written
    if restart_frames < frames_written:
        assert done.is_complete  # copied again under the writer turn, to the last frame
        assert after.log_frames < 10  # one small commit's pages: the log started over
    else:
        assert not done.is_complete
        assert after.log_frames > frames_written  # the log only grew


async def test_a_long_write_transaction_does_not_hold_up_the_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpoint, "WRITER_TURN_WAIT_SECONDS", 0.2)
    # At normal priority here (the niceness has its own test): at nice 19 on a machine
    # busy with the rest of the suite, the thread waited its turn for seconds (CI: 3.8 s).
    monkeypatch.setattr(checkpoint, "NICENESS", 0)
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'wal.db'}", wal_autocheckpoint=False)
    checkpointer = WalCheckpointer(engine, restart_frames=100)
    try:
        await write_on_the_loop(engine)
        async with engine.begin() as conn:  # holds the writer turn until the block ends
            await conn.execute(text("INSERT INTO ballast VALUES (:b)"), {"b": b"open"})
            started = time.monotonic()
            done = await checkpointer.checkpoint()
            waited = time.monotonic() - started
    finally:
        await asyncio.to_thread(checkpointer.close)
        await engine.dispose()
    assert done.is_complete  # what was committed was copied; the restart waits for next time
    # Held up by the open transaction, it would have waited out the busy timeout (10 s) or
    # never returned (the transaction ends only after it).
    assert waited < BUSY_TIMEOUT_MS / 1000 / 2


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread niceness is Linux's")
async def test_the_checkpoint_runs_on_a_thread_of_the_lowest_priority(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'wal.db'}", wal_autocheckpoint=False)
    checkpointer = WalCheckpointer(engine)
    loop_thread = threading.get_native_id()
    loop_niceness = os.getpriority(os.PRIO_PROCESS, loop_thread)
    try:
        await write_on_the_loop(engine)
        done = await checkpointer.checkpoint()
        thread = checkpointer.thread_id
        assert thread is not None and thread != loop_thread
        assert os.getpriority(os.PRIO_PROCESS, thread) == NICENESS
    finally:
        await asyncio.to_thread(checkpointer.close)
        await engine.dispose()
    assert done.is_complete and done.log_frames > BYTES // 4096
    assert os.getpriority(os.PRIO_PROCESS, loop_thread) == loop_niceness  # the loop's own


async def test_a_failing_checkpoint_is_reported_once_not_every_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'wal.db'}", wal_autocheckpoint=False)
    checkpointer = WalCheckpointer(engine)
    app = web.Application()
    app[WAL_CHECKPOINTER] = checkpointer

    def broken() -> WalCheckpoint:
        raise sqlite3.OperationalError("disk I/O error")

    failed_before = checkpoints("failed")
    try:
        caplog.set_level(logging.DEBUG, logger="resolver.jobs.wal_checkpoint")
        monkeypatch.setattr(checkpointer, "_on_low_priority_thread", broken)
        for _ in range(3):
            await wal_checkpoint.run(app)
        monkeypatch.undo()
        await wal_checkpoint.run(app)
        await wal_checkpoint.run(app)
    finally:
        await asyncio.to_thread(checkpointer.close)
        await engine.dispose()
    said = [(r.levelname, r.getMessage(), r.exc_info) for r in caplog.records]
    failed = f"OperationalError: disk I/O error (trying again every {EVERY_SECONDS:g} s)"
    assert said == [
        ("WARNING", f"WAL checkpoint failed: {failed}", None),
        ("WARNING", "WAL checkpoint works again", None),
    ]
    assert checkpoints("failed") == failed_before + 3
