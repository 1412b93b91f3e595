"""Job (SQLite only): copy the write-ahead log into the database file, off the event loop.

The serving engine never checkpoints inside a commit (resolver.db.checkpoint says why);
this does it instead, once a second, on the checkpointer's own low-priority thread.
PASSIVE: it never waits for a reader or a writer, and what it cannot copy now it copies
next time.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator

from aiohttp import web
from sqlalchemy.engine import make_url

from resolver.appkeys import ENGINE, SETTINGS, WAL_CHECKPOINTER
from resolver.db.checkpoint import WalCheckpointer
from resolver.jobs.scheduler import add_job

log = logging.getLogger(__name__)

#: At a few hundred commits a second, the log stays at a few MB between two runs.
EVERY_SECONDS = 1.0


async def run(app: web.Application) -> None:
    checkpointer = app[WAL_CHECKPOINTER]
    try:
        done = await checkpointer.checkpoint()
    except sqlite3.Error as error:
        # Every second: a traceback each time (the scheduler's default) would bury the log.
        # Said once per cause, and once more when it clears.
        if str(error) != checkpointer.failing:
            checkpointer.failing = str(error)
            log.warning("WAL checkpoint failed: %s (trying again every %g s)", error, EVERY_SECONDS)
        return
    if checkpointer.failing is not None:
        checkpointer.failing = None
        log.warning("WAL checkpoint works again")
    if done.busy:
        log.debug("WAL checkpoint found the database busy; next time")


async def checkpointer_ctx(app: web.Application) -> AsyncIterator[None]:
    checkpointer = WalCheckpointer(app[ENGINE])
    app[WAL_CHECKPOINTER] = checkpointer
    yield
    # Waits for a checkpoint in progress: off the loop.
    await asyncio.to_thread(checkpointer.close)


def setup(app: web.Application) -> None:
    url = make_url(app[SETTINGS].database_url)
    # An in-memory database has no log to copy.
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        app.cleanup_ctx.append(checkpointer_ctx)
        # Per process: it is this process's log to copy (and SQLite has no other replica).
        add_job(
            app,
            "wal_checkpoint",
            run,
            every_seconds=EVERY_SECONDS,
            first_run_after=1.0,
            leader_only=False,
        )
