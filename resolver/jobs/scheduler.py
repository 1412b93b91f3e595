"""The one APScheduler of the process, started and stopped in a ``cleanup_ctx``.

Features register jobs with ``add_job`` during ``setup``; the scheduler starts them when the
app starts. A job is an ``async`` function of the app that opens its own transaction(s), so
a failing job never leaves anything half-written and never stops the scheduler; what it
returns is its run's summary (``resolver.jobs.runs``).

Every replica schedules every job, but a shared job (``leader_only``, the default) only runs
on the replica that is the job leader (``resolver.jobs.leader``); the others skip it, which
costs one attribute read. Per-process jobs (the SQLite WAL checkpoint) run everywhere. Each
run of a shared job is recorded in ``job_runs`` for every replica to show.
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

from resolver.appkeys import JOB_LEADER, SESSIONMAKER
from resolver.jobs import leader
from resolver.jobs.runs import RunRecord, error_name, save_run, summarize
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
    #: Shared work, run by the job leader only; False: every process runs its own.
    leader_only: bool = True


JOBS = web.AppKey("jobs", list[JobSpec])
SCHEDULER = web.AppKey("scheduler", AsyncIOScheduler)
#: Each job's last run in this process (shared jobs' runs are in ``job_runs`` too).
LAST_RUNS = web.AppKey("job_last_runs", dict[str, RunRecord])


def add_job(
    app: web.Application,
    name: str,
    func: JobFunc,
    *,
    every_seconds: float,
    first_run_after: float | None = None,
    leader_only: bool = True,
) -> None:
    """Run ``func(app)`` every ``every_seconds`` once the app has started: on the job
    leader only, unless ``leader_only`` is False (work each process must do itself)."""
    specs = app.setdefault(JOBS, [])
    if any(spec.name == name for spec in specs):
        raise ValueError(f"job {name!r} is registered twice")
    first = min(60.0, every_seconds) if first_run_after is None else first_run_after
    specs.append(JobSpec(name, func, every_seconds, first, leader_only))


def _logged(
    spec: JobSpec, app: web.Application, running: set[asyncio.Task[object]]
) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        elected = app.get(JOB_LEADER)
        if spec.leader_only and elected is not None and not elected.is_leader:
            return  # another replica runs it
        task = asyncio.current_task()
        if task is not None:
            running.add(task)
        try:
            await _run_and_record(spec, app)
        finally:
            if task is not None:
                running.discard(task)

    return run


async def _run_and_record(spec: JobSpec, app: web.Application) -> None:
    started_at = datetime.now(UTC)
    started = time.monotonic()
    ok = False
    result: object = None
    error = None
    try:
        result = await spec.func(app)
        ok = True
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        # The next run retries; the traceback goes to the log, never to a client.
        log.exception("job %s failed", spec.name)
        error = error_name(exc)
    # Not for a cancelled run (shutdown): it neither succeeded nor failed.
    seconds = time.monotonic() - started
    JOB_RUNS.labels(spec.name, "ok" if ok else "failed").inc()
    JOB_LAST_RUN.labels(spec.name).set(time.time())
    JOB_LAST_OK.labels(spec.name).set(1 if ok else 0)
    JOB_LAST_SECONDS.labels(spec.name).set(seconds)
    finished_at = datetime.now(UTC)
    runs = app.get(LAST_RUNS)
    previous = runs.get(spec.name) if runs is not None else None
    record = RunRecord(
        name=spec.name,
        started_at=started_at,
        finished_at=finished_at,
        ok=ok,
        duration_ms=round(seconds * 1000),
        summary=summarize(result),
        error=error,
        replica=leader.replica_name(),
        last_ok_at=finished_at if ok else (previous.last_ok_at if previous else None),
    )
    if runs is not None:
        runs[spec.name] = record
    if spec.leader_only:
        await _save(app, record)


async def _save(app: web.Application, record: RunRecord) -> None:
    sessions = app.get(SESSIONMAKER)
    if sessions is None:
        return
    try:
        async with sessions() as session, session.begin():
            await save_run(session, record)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # the run happened; only its record is missing
        log.warning("job %s: its run could not be recorded: %s", record.name, type(exc).__name__)


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
    app[LAST_RUNS] = {}
    # The leader's context first, so it outlives the scheduler's: no job runs unelected.
    leader.setup(app)
    app.cleanup_ctx.append(scheduler_ctx)
