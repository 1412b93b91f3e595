"""``/admin/v1/roles``: permission sets that compile into scoped signing keys."""

from __future__ import annotations

from aiohttp import web

from resolver.admin.bodies import json_object
from resolver.appkeys import SEALER, SESSIONMAKER, SETTINGS
from resolver.errors import ValidationError
from resolver.http.auth import actor_of, authenticate
from resolver.http.handling import add_routes
from resolver.http.pushing import wake_pusher
from resolver.policy import manage
from resolver.policy.roles import ROLE_KEYS


async def list_roles(request: web.Request) -> web.Response:
    await authenticate(request, "admin:read")
    async with request.app[SESSIONMAKER]() as session:
        roles = [await manage.role_json(session, r) for r in await manage.list_roles(session)]
    return web.json_response({"roles": roles})


async def get_role(request: web.Request) -> web.Response:
    await authenticate(request, "admin:read")
    async with request.app[SESSIONMAKER]() as session:
        role = await manage.get_role(session, request.match_info["name"])
        return web.json_response(await manage.role_json(session, role))


async def create_role(request: web.Request) -> web.Response:
    await authenticate(request, "admin")
    body = await json_object(request, allowed={"name", *ROLE_KEYS})
    name = body.pop("name", None)
    async with request.app[SESSIONMAKER]() as session, session.begin():
        role = await manage.create_role(
            session, manage.check_role_name(name), body, actor=actor_of(request)
        )
        answer = await manage.role_json(session, role)
    return web.json_response(
        answer, status=201, headers={"Location": f"/admin/v1/roles/{role.name}"}
    )


async def replace_role(request: web.Request) -> web.Response:
    await authenticate(request, "admin")
    body = await json_object(request, allowed={"name", *ROLE_KEYS})
    name = request.match_info["name"]
    if body.pop("name", name) != name:
        raise ValidationError("the body's name differs from the path's")
    app = request.app
    async with app[SESSIONMAKER]() as session, session.begin():
        role, resigned = await manage.replace_role(
            session, app[SEALER], app[SETTINGS], name, body, actor=actor_of(request)
        )
        answer = await manage.role_json(session, role)
    if resigned:
        wake_pusher(app)
    return web.json_response({**answer, "accounts_resigned": len(resigned)})


async def delete_role(request: web.Request) -> web.Response:
    await authenticate(request, "admin")
    app = request.app
    async with app[SESSIONMAKER]() as session, session.begin():
        # Accounts still carrying a scoped key for a role set with this role are re-signed.
        resigned = await manage.delete_role(
            session, app[SEALER], app[SETTINGS], request.match_info["name"], actor=actor_of(request)
        )
    if resigned:
        wake_pusher(app)
    return web.Response(status=204)


def setup(app: web.Application) -> None:
    add_routes(
        app,
        [
            web.get("/admin/v1/roles", list_roles),
            web.post("/admin/v1/roles", create_role),
            web.get("/admin/v1/roles/{name}", get_role),
            web.put("/admin/v1/roles/{name}", replace_role),
            web.delete("/admin/v1/roles/{name}", delete_role),
        ],
    )
