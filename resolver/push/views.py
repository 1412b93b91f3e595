"""``GET /admin/v1/push``: what is waiting to be pushed and how every server answered last."""

from __future__ import annotations

from aiohttp import web

from resolver.appkeys import SESSIONMAKER
from resolver.http.auth import authenticate
from resolver.http.handling import add_routes
from resolver.push.state import PUSH_CONNECTION
from resolver.push.status import push_status


async def get_push_status(request: web.Request) -> web.Response:
    await authenticate(request, "admin:read")
    async with request.app[SESSIONMAKER]() as session:
        body = await push_status(session)
    connection = request.app.get(PUSH_CONNECTION)
    # This replica's own connection; other replicas push too and report here via the rows.
    body["nats"] = {
        "enabled": connection is not None,
        "connected": connection.connected if connection is not None else False,
        "server": connection.server_url if connection is not None else None,
    }
    return web.json_response(body)


def setup(app: web.Application) -> None:
    add_routes(app, [web.get("/admin/v1/push", get_push_status)])
