"""Periodic jobs (APScheduler): the scheduler lives in ``scheduler``, each job in its module.

The SQLite WAL checkpoint is periodic too, but paces itself ten times a second, outside
the scheduler (``wal_checkpoint`` says why)."""

from __future__ import annotations

from aiohttp import web

from resolver.jobs import (
    audit_retention,
    bindings,
    issued_keys_retention,
    prune,
    reconcile,
    resign,
    rotate,
    scheduler,
    wal_checkpoint,
)


def setup(app: web.Application) -> None:
    wal_checkpoint.setup(app)
    scheduler.setup(app)
    resign.setup(app)
    bindings.setup(app)
    prune.setup(app)
    audit_retention.setup(app)
    issued_keys_retention.setup(app)
    rotate.setup(app)
    reconcile.setup(app)
