"""Periodic jobs (APScheduler): the scheduler lives in ``scheduler``, each job in its module."""

from __future__ import annotations

from aiohttp import web

from resolver.jobs import (
    audit_retention,
    bindings,
    prune,
    reconcile,
    resign,
    rotate,
    scheduler,
    wal_checkpoint,
)


def setup(app: web.Application) -> None:
    # Before the scheduler: what a job holds (the checkpointer's thread) is released after
    # the scheduler has stopped the jobs (cleanup contexts unwind in reverse).
    wal_checkpoint.setup(app)
    scheduler.setup(app)
    resign.setup(app)
    bindings.setup(app)
    prune.setup(app)
    audit_retention.setup(app)
    rotate.setup(app)
    reconcile.setup(app)
