"""Per process (SQLite only): copy the write-ahead log into the database file, off the
event loop, ten times a second.

The serving engine never checkpoints inside a commit (resolver.db.checkpoint says why);
this does it instead, on the checkpointer's own low-priority thread. PASSIVE: it never
waits for a reader or a writer, and what it cannot copy now it copies next time.

Why ten times a second and not once: a checkpoint fsyncs the log, and while the kernel
writes the log's dirty pages back, a commit that writes to the page being written back
waits for it (strace of the service at 200 exchanges a second: the event loop's
``pwrite64`` to the log blocked 9-16 ms during the checkpoint thread's ``fdatasync``). The
credentials batch commits on the event loop, so every request in flight waited too: a
cluster of 10-30 ms requests once a second. That wait grows with what a checkpoint has to
flush: in plain sqlite3 with a commit every 5 ms, checkpoints once a second left commits
up to 10-17 ms late, every 250 ms at most 3.6-6 ms, every 100 ms at most 3.1-3.5 ms.

Not an APScheduler job: a scheduler run costs about 0.8 ms of the loop's CPU on the 2-core
VM, more than the checkpoint's own hand-off to its thread, and at this rate a slow
checkpoint would be reported as a skipped run. It paces itself: each checkpoint starts
``EVERY_SECONDS`` after the previous one finished, so two never overlap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from sqlalchemy.engine import make_url

from resolver.appkeys import ENGINE, SETTINGS, WAL_CHECKPOINTER
from resolver.db.checkpoint import WalCheckpointer
from resolver.metrics import WAL_CHECKPOINTS, WAL_LOG_FRAMES

log = logging.getLogger(__name__)

#: At 200 exchanges a second (about 3,300 log frames a second) a checkpoint then has about
#: 1.4 MB to flush.
EVERY_SECONDS = 0.1


async def run(app: web.Application) -> None:
    """One checkpoint; failures are logged once per cause, and once more when they clear."""
    checkpointer = app[WAL_CHECKPOINTER]
    try:
        done = await checkpointer.checkpoint()
    except Exception as error:  # whatever it is, it must not end the pacing
        WAL_CHECKPOINTS.labels("failed").inc()
        # Ten times a second: a traceback each time would bury the log.
        cause = f"{type(error).__name__}: {error}"
        if cause != checkpointer.failing:
            checkpointer.failing = cause
            log.warning("WAL checkpoint failed: %s (trying again every %g s)", cause, EVERY_SECONDS)
        return
    WAL_LOG_FRAMES.set(done.log_frames)
    if checkpointer.failing is not None:
        checkpointer.failing = None
        log.warning("WAL checkpoint works again")
    if done.busy:
        WAL_CHECKPOINTS.labels("busy").inc()
        log.debug("WAL checkpoint found the database busy; next time")
    else:
        WAL_CHECKPOINTS.labels("ok").inc()


async def _pace(app: web.Application) -> None:
    while True:
        await asyncio.sleep(EVERY_SECONDS)
        await run(app)


async def checkpointer_ctx(app: web.Application) -> AsyncIterator[None]:
    checkpointer = WalCheckpointer(app[ENGINE])
    app[WAL_CHECKPOINTER] = checkpointer
    pacing = asyncio.get_running_loop().create_task(_pace(app), name="wal-checkpoint")
    yield
    pacing.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await pacing
    # Waits for a checkpoint in progress: off the loop.
    await asyncio.to_thread(checkpointer.close)


def setup(app: web.Application) -> None:
    url = make_url(app[SETTINGS].database_url)
    # An in-memory database has no log to copy.
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        # Per process: it is this process's log to copy (and SQLite has no other replica).
        app.cleanup_ctx.append(checkpointer_ctx)
