"""The connection audit's lifecycle: started after the database, stopped before it (its
last batch is written on the way out)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from resolver.appkeys import SESSIONMAKER, SETTINGS
from resolver.audit.connection_recorder import ConnectionRecorder


async def connection_audit_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    recorder = ConnectionRecorder(app[SESSIONMAKER], settings.nats, settings.system_creds_path)
    recorder.start()
    try:
        yield
    finally:
        await recorder.stop()


def setup(app: web.Application) -> None:
    """Record connections when ``[audit] record_connections`` and NATS are both on."""
    settings = app[SETTINGS]
    if settings.audit.record_connections and settings.nats.enabled:
        app.cleanup_ctx.append(connection_audit_ctx)
