"""The one APScheduler of the process, started and stopped in a ``cleanup_ctx``.

Features register jobs with ``add_job`` during ``setup``; the scheduler starts them when the
app starts. A job is an ``async`` function of the app that opens its own transaction(s), so
a failing job never leaves anything half-written and never stops the scheduler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from resolver.metrics import JOB_LAST_OK, JOB_LAST_RUN, JOB_LAST_SECONDS, JOB_RUNS

log = logging.getLogger(__name__)

JobFunc = Callable[[web.Application], Awaitable[object]]


@dataclass(frozen=True)
class JobSpec:
    name: str
    func: JobFunc
    every_seconds: float
    #: Delay before the first run: start-up is busy enough, and tests rarely live this long.
    first_run_after: float


JOBS = web.AppKey("jobs", list[JobSpec])
SCHEDULER = web.AppKey("scheduler", AsyncIOScheduler)


def add_job(
    app: web.Application,
    name: str,
    func: JobFunc,
    *,
    every_seconds: float,
    first_run_after: float | None = None,
) -> None:
    """Run ``func(app)`` every ``every_seconds`` once the app has started."""
    specs = app.setdefault(JOBS, [])
    if any(spec.name == name for spec in specs):
        raise ValueError(f"job {name!r} is registered twice")
    first = min(60.0, every_seconds) if first_run_after is None else first_run_after
    specs.append(JobSpec(name, func, every_seconds, first))


def _logged(
    spec: JobSpec, app: web.Application, running: set[asyncio.Task[object]]
) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        task = asyncio.current_task()
        if task is not None:
            running.add(task)
        started = time.monotonic()
        ok = False
        try:
            await spec.func(app)
            ok = True
        except asyncio.CancelledError:
            raise
        except Exception:
            # The next run retries; the traceback goes to the log, never to a client.
            log.exception("job %s failed", spec.name)
        finally:
            if task is not None:
                running.discard(task)
        # Not for a cancelled run (shutdown): it neither succeeded nor failed.
        JOB_RUNS.labels(spec.name, "ok" if ok else "failed").inc()
        JOB_LAST_RUN.labels(spec.name).set(time.time())
        JOB_LAST_OK.labels(spec.name).set(1 if ok else 0)
        JOB_LAST_SECONDS.labels(spec.name).set(time.monotonic() - started)

    return run


async def scheduler_ctx(app: web.Application) -> AsyncIterator[None]:
    scheduler = AsyncIOScheduler(timezone=UTC)
    running: set[asyncio.Task[object]] = set()
    now = datetime.now(UTC)
    for spec in app.get(JOBS, []):
        scheduler.add_job(
            _logged(spec, app, running),
            "interval",
            seconds=spec.every_seconds,
            id=spec.name,
            name=spec.name,
            next_run_time=now + timedelta(seconds=spec.first_run_after),
            # A slow run is never overlapped by the next one; missed runs collapse into one.
            max_instances=1,
            coalesce=True,
            misfire_grace_time=int(max(1, spec.every_seconds)),
        )
    scheduler.start()
    app[SCHEDULER] = scheduler
    yield
    # shutdown() cancels running job tasks; wait for them so none outlives the engine.
    unfinished = list(running)
    scheduler.shutdown(wait=False)
    for task in unfinished:
        with contextlib.suppress(BaseException):
            await task


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(scheduler_ctx)
