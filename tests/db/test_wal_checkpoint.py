"""WAL checkpoints: never inside a commit of the serving engine, always by the checkpointer."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from resolver.app import create_app
from resolver.appkeys import ENGINE, WAL_CHECKPOINTER
from resolver.config import Settings
from resolver.db import sqlite_driver
from resolver.db.checkpoint import WalCheckpointer, checkpoint_wal
from resolver.db.engine import create_engine
from tests.push.conftest import wait_for

#: Written in commits of 64 KiB: 2,000 pages of 4 KiB, twice SQLite's auto-checkpoint mark.
BYTES = 8 * 1024 * 1024
CHUNK = 64 * 1024


async def _now(value: Any) -> Any:
    return value


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
    try:
        await write_on_the_loop(engine)
        done = await checkpoint_wal(engine)
    finally:
        await engine.dispose()
    assert done is not None and done.busy == 0
    # Everything is in the database file now, whoever copied it.
    assert done.checkpointed_frames == done.log_frames
    if autocheckpoint:
        # SQLite's own: the commits checkpointed (and restarted the log) on the way.
        assert done.log_frames < 1_100
    else:
        # Not one commit checkpointed: the whole write was still in the log.
        assert done.log_frames > BYTES // 4096


async def test_the_app_checkpoints_the_log_in_the_background(
    settings: Settings, engine: AsyncEngine, aiohttp_client: Any
) -> None:
    if engine.dialect.name != "sqlite":
        # PostgreSQL has no such log to copy: the checkpointer does not run.
        client = await aiohttp_client(create_app(settings))
        checkpointer = client.app[WAL_CHECKPOINTER]
        await asyncio.sleep(checkpointer.interval * 1.5)
        assert checkpointer.last is None and checkpointer.failures == 0
        return
    client = await aiohttp_client(create_app(settings))
    app_engine = client.app[ENGINE]
    async with app_engine.connect() as conn:
        assert (await conn.exec_driver_sql("PRAGMA wal_autocheckpoint")).scalar() == 0
    database = Path(app_engine.url.database or "")
    before = await asyncio.to_thread(lambda: database.stat().st_size)

    await write_on_the_loop(app_engine)
    checkpointer: WalCheckpointer = client.app[WAL_CHECKPOINTER]

    async def copied() -> bool:
        # The file grows while a checkpoint copies: wait for the run that copied it all.
        last = checkpointer.last
        size = await asyncio.to_thread(lambda: database.stat().st_size)
        return size >= before + BYTES and last is not None and last.is_complete

    await wait_for(copied, within=10 * checkpointer.interval, what="a checkpoint of the log")
    assert checkpointer.failures == 0


async def test_a_failed_checkpoint_is_counted_and_tried_again(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'gone' / 'wal.db'}")
    checkpointer = WalCheckpointer(engine, interval=0.01)
    checkpointer.start()
    try:
        # The directory does not exist: every run fails, none stops the checkpointer.
        await wait_for(lambda: _now(checkpointer.failures >= 3), within=10, what="failures")
        await asyncio.to_thread((tmp_path / "gone").mkdir)
        await wait_for(lambda: _now(checkpointer.last), within=10, what="a checkpoint")
    finally:
        await checkpointer.stop()
        await engine.dispose()
