"""``/healthz`` (the process answers) and ``/readyz`` (database reachable, schema at head)."""

from __future__ import annotations

import logging

from aiohttp import web
from sqlalchemy import text

from resolver.appkeys import ENGINE, SCHEMA_HEAD
from resolver.db.migrate import current_revision
from resolver.http.handling import add_routes

log = logging.getLogger(__name__)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        revision = await current_revision(engine)
    except Exception as exc:  # any database failure means "not ready", never a 500
        log.warning("readiness check failed: %s", type(exc).__name__)
        return web.json_response({"status": "unavailable", "database": "unreachable"}, status=503)
    expected = request.app[SCHEMA_HEAD]
    if revision != expected:
        return web.json_response(
            {"status": "unavailable", "database": "ok", "schema": revision, "expected": expected},
            status=503,
        )
    return web.json_response({"status": "ok", "database": "ok", "schema": revision})


def setup(app: web.Application) -> None:
    add_routes(app, [web.get("/healthz", healthz), web.get("/readyz", readyz)])
