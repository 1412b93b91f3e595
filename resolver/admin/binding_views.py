"""``/admin/v1/bindings``: which IdP group (or token claim) gets which role in which account."""

from __future__ import annotations

from dataclasses import replace

from aiohttp import web

from resolver.admin.bodies import json_object
from resolver.appkeys import SEALER, SESSIONMAKER, SETTINGS
from resolver.errors import ValidationError
from resolver.http.auth import actor_of, authenticate
from resolver.http.handling import add_routes
from resolver.http.pushing import wake_pusher
from resolver.policy import manage
from resolver.policy.document import parse_binding, parse_until

BINDING_FIELDS = {"account", "role", "group", "group_id", "claim", "ends_at"}


def _binding_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not raw.isdigit() or len(raw) > 18:
        raise ValidationError(f"binding id must be a number, not {raw[:40]!r}")
    return int(raw)


async def list_bindings(request: web.Request) -> web.Response:
    await authenticate(request, "admin:read")
    query = request.query
    async with request.app[SESSIONMAKER]() as session:
        rows = await manage.list_bindings(
            session,
            account=query.get("account"),
            role=query.get("role"),
            group=query.get("group"),
        )
        answer = [await manage.binding_json(session, b) for b in rows]
    return web.json_response({"bindings": answer})


async def get_binding(request: web.Request) -> web.Response:
    await authenticate(request, "admin:read")
    async with request.app[SESSIONMAKER]() as session:
        binding = await manage.get_binding(session, _binding_id(request))
        return web.json_response(await manage.binding_json(session, binding))


async def create_binding(request: web.Request) -> web.Response:
    await authenticate(request, "admin")
    body = await json_object(request, allowed=BINDING_FIELDS)
    raw_end = body.pop("ends_at", None)
    ends_at = parse_until(raw_end, "ends_at") if raw_end is not None else None
    role = body.get("role")
    # The same rules as a policy file's bindings; the role's existence is checked against
    # the store (a 404), so here any well-formed name passes.
    spec = parse_binding(body, "binding", set(), {role} if isinstance(role, str) else set())
    spec = replace(spec, until=ends_at)
    async with request.app[SESSIONMAKER]() as session, session.begin():
        binding = await manage.create_binding(session, spec, actor=actor_of(request))
        answer = await manage.binding_json(session, binding)
    return web.json_response(
        answer, status=201, headers={"Location": f"/admin/v1/bindings/{binding.id}"}
    )


async def update_binding(request: web.Request) -> web.Response:
    await authenticate(request, "admin")
    body = await json_object(request, allowed={"ends_at"})
    if "ends_at" not in body:
        raise ValidationError("'ends_at' is required (an ISO 8601 time, or null for no end)")
    ends_at = None if body["ends_at"] is None else parse_until(body["ends_at"], "ends_at")
    app = request.app
    async with app[SESSIONMAKER]() as session, session.begin():
        binding = await manage.get_binding(session, _binding_id(request))
        resigned = await manage.set_binding_end(
            session, app[SEALER], app[SETTINGS], binding, ends_at, actor=actor_of(request)
        )
        answer = await manage.binding_json(session, binding)
    if resigned:
        wake_pusher(app)
    return web.json_response(answer)


async def delete_binding(request: web.Request) -> web.Response:
    await authenticate(request, "admin")
    app = request.app
    async with app[SESSIONMAKER]() as session, session.begin():
        binding = await manage.get_binding(session, _binding_id(request))
        await manage.remove_binding(
            session, app[SEALER], app[SETTINGS], binding, actor=actor_of(request)
        )
    wake_pusher(app)
    return web.Response(status=204)


def setup(app: web.Application) -> None:
    add_routes(
        app,
        [
            web.get("/admin/v1/bindings", list_bindings),
            web.post("/admin/v1/bindings", create_binding),
            web.get("/admin/v1/bindings/{id}", get_binding),
            web.patch("/admin/v1/bindings/{id}", update_binding),
            web.delete("/admin/v1/bindings/{id}", delete_binding),
        ],
    )
