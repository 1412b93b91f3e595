"""``GET /admin/v1/jobs``: the scheduled jobs, who leads them, and each one's last run."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from resolver.appkeys import JOB_LEADER, SESSIONMAKER
from resolver.http.auth import authenticate
from resolver.http.handling import add_routes
from resolver.jobs.leader import lock_holder, replica_name
from resolver.jobs.runs import load_runs, row_json
from resolver.jobs.scheduler import JOBS, LAST_RUNS, SCHEDULER


async def list_jobs(request: web.Request) -> web.Response:
    """Every registered job with its interval and next run on this replica. ``last_run``
    is the newest run on any replica for shared jobs (``leader_only``), this replica's own
    for per-process ones. ``leader`` says whether this replica runs the shared jobs, who
    holds the lock now (PostgreSQL), and which replica ran the newest recorded run."""
    await authenticate(request, "admin:read")
    app = request.app
    elected = app.get(JOB_LEADER)
    async with app[SESSIONMAKER]() as session:
        recorded = await load_runs(session)
        holder = replica_name() if elected is not None and elected.is_leader else None
        if elected is not None and elected.election == "postgresql-advisory-lock":
            holder = await lock_holder(session)
    scheduler = app.get(SCHEDULER)
    own = app.get(LAST_RUNS, {})
    jobs: list[dict[str, Any]] = []
    for spec in app.get(JOBS, []):
        scheduled = scheduler.get_job(spec.name) if scheduler is not None else None
        next_run = getattr(scheduled, "next_run_time", None)
        if spec.leader_only:
            row = recorded.get(spec.name)
            last = row_json(row) if row is not None else None
        else:
            mine = own.get(spec.name)
            last = mine.as_json() if mine is not None else None
        jobs.append(
            {
                "name": spec.name,
                "every_seconds": spec.every_seconds,
                "leader_only": spec.leader_only,
                "next_run_at": next_run.isoformat() if next_run is not None else None,
                "last_run": last,
            }
        )
    newest = max(recorded.values(), key=lambda row: row.started_at, default=None)
    return web.json_response(
        {
            "replica": replica_name(),
            "leader": {
                "election": elected.election if elected is not None else None,
                "this_replica": bool(elected is not None and elected.is_leader),
                "holder": holder,
                "last_runner": newest.replica if newest is not None else None,
            },
            "jobs": jobs,
        }
    )


def setup(app: web.Application) -> None:
    add_routes(app, [web.get("/admin/v1/jobs", list_jobs)])
