"""Pushing account JWTs to nats-server over the system account, from a durable outbox."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from resolver.appkeys import ENGINE, PUSHER, SESSIONMAKER, SETTINGS
from resolver.push import views
from resolver.push.connection import SystemConnection
from resolver.push.pusher import Pusher
from resolver.push.state import PUSH_CONNECTION


class NullWaker:
    """The waker when NATS is disabled: rows stay pending for a process that has NATS."""

    def wake(self) -> None:
        pass


async def push_ctx(app: web.Application) -> AsyncIterator[None]:
    """The NATS connection and the pusher loop, started after the database, stopped before."""
    settings = app[SETTINGS]
    if PUSHER in app or not settings.nats.enabled:
        app.setdefault(PUSHER, NullWaker())
        yield
        return
    engine = app[ENGINE]
    connection: SystemConnection | None = None
    pusher: Pusher | None = None

    def on_connected() -> None:
        if pusher is not None:
            pusher.wake_reconnected()

    connection = SystemConnection(
        settings.nats, settings.system_creds_path, on_connected=on_connected
    )
    pusher = Pusher(
        app[SESSIONMAKER],
        connection,
        timeout=settings.nats.push_timeout,
        row_locks=engine.dialect.name == "postgresql",
    )
    app[PUSH_CONNECTION] = connection
    app[PUSHER] = pusher
    connection.start()
    pusher.start()
    try:
        yield
    finally:
        await pusher.stop()
        await connection.close()


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(push_ctx)
    views.setup(app)
