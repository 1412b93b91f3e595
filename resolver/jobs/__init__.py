"""Periodic jobs (APScheduler): the scheduler lives in ``scheduler``, each job in its module."""

from __future__ import annotations

from aiohttp import web

from resolver.jobs import bindings, prune, resign, scheduler, wal_checkpoint


def setup(app: web.Application) -> None:
    scheduler.setup(app)
    resign.setup(app)
    bindings.setup(app)
    prune.setup(app)
    wal_checkpoint.setup(app)
