"""WAL checkpoints: never inside a commit of the serving engine, always by the job."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from resolver.app import create_app
from resolver.appkeys import ENGINE
from resolver.config import Settings
from resolver.db import sqlite_driver
from resolver.db.checkpoint import checkpoint_wal
from resolver.db.engine import create_engine
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
    try:
        await write_on_the_loop(engine)
        done = await checkpoint_wal(engine)
    finally:
        await engine.dispose()
    assert done is not None
    assert done.is_complete  # everything is in the database file now, whoever copied it
    if autocheckpoint:
        # SQLite's own: the commits checkpointed (and restarted the log) on the way.
        assert done.log_frames < 1_100
    else:
        # Not one commit checkpointed: the whole write was still in the log.
        assert done.log_frames > BYTES // 4096


async def test_the_app_checkpoints_the_log_in_a_job(
    settings: Settings, engine: AsyncEngine, aiohttp_client: Any
) -> None:
    app = create_app(settings)
    jobs = {spec.name for spec in app[JOBS]}
    if engine.dialect.name != "sqlite":
        assert "wal_checkpoint" not in jobs  # PostgreSQL has no such log to copy
        return
    assert "wal_checkpoint" in jobs
    client = await aiohttp_client(app)
    app_engine = client.app[ENGINE]
    async with app_engine.connect() as conn:
        assert (await conn.exec_driver_sql("PRAGMA wal_autocheckpoint")).scalar() == 0
    database = Path(app_engine.url.database or "")

    def size() -> int:
        return database.stat().st_size

    before = await asyncio.to_thread(size)
    await write_on_the_loop(app_engine)

    async def copied() -> bool:
        # Only a checkpoint writes the log's pages into the file; the last page comes last.
        return await asyncio.to_thread(size) >= before + BYTES

    await wait_for(copied, within=10 * EVERY_SECONDS, what="a checkpoint of the log")
