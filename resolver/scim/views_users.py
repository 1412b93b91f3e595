"""``/scim/v2/Users``: list, search, get, create, replace, patch, delete."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from resolver.appkeys import SESSIONMAKER
from resolver.db.models import User
from resolver.http.handling import add_routes, scim_operation
from resolver.scim.render import Projection, etag, user_document
from resolver.scim.resources import ENTERPRISE_SCHEMA, USER_SCHEMA
from resolver.scim.users_store import UserStore
from resolver.scim.views_common import (
    ListQuery,
    if_match,
    list_chunks,
    locations,
    not_modified,
    one,
    projection_of,
    query_params,
    read_body,
    scim_response,
    scim_view,
    search_body,
    stream_response,
    writer_of,
)

EXTENSIONS = (ENTERPRISE_SCHEMA,)


async def render_users(
    store: UserStore,
    request: web.Request,
    rows: list[User],
    projection: Projection,
    *,
    groups: bool = True,
) -> list[dict[str, Any]]:
    found = (
        await store.groups_of([r.id for r in rows]) if groups and projection.wants("groups") else {}
    )
    where = locations(request)
    return [projection.apply(user_document(r, where, found.get(r.id))) for r in rows]


async def run_list(request: web.Request, params: dict[str, Any]) -> web.StreamResponse:
    query = ListQuery.parse(params, core=USER_SCHEMA, extensions=EXTENSIONS)
    async with request.app[SESSIONMAKER]() as session:
        store = UserStore(session)
        total, rows = await store.list(query.filter, query.page)
        docs = await render_users(store, request, rows, query.projection)
    return await stream_response(request, list_chunks(total, query.page, [one(d) for d in docs]))


@scim_view
async def list_users(request: web.Request) -> web.StreamResponse:
    return await run_list(request, query_params(request))


@scim_view
async def search_users(request: web.Request) -> web.StreamResponse:
    return await run_list(request, search_body(await read_body(request)))


async def _respond(
    request: web.Request, session: Any, row: User, *, status: int = 200, new: bool = False
) -> web.Response:
    projection = projection_of(query_params(request), USER_SCHEMA, EXTENSIONS)
    # A user just created belongs to no group: no query needed.
    docs = await render_users(UserStore(session), request, [row], projection, groups=not new)
    headers = {"ETag": etag(row.version), "Location": locations(request).user(row.id)}
    return scim_response(docs[0], status=status, headers=headers)


@scim_view
async def get_user(request: web.Request) -> web.StreamResponse:
    async with request.app[SESSIONMAKER]() as session:
        row = await UserStore(session).get(request.match_info["id"])
        return not_modified(request, row.version) or await _respond(request, session, row)


@scim_view
async def create_user(request: web.Request) -> web.StreamResponse:
    payload = await read_body(request)
    # The response is rendered inside the transaction: one round of BEGIN/COMMIT per write.
    async with request.app[SESSIONMAKER]() as session, session.begin():
        row = await UserStore(session, writer_of(request)).create(payload)
        return await _respond(request, session, row, status=201, new=True)


@scim_view
async def replace_user(request: web.Request) -> web.StreamResponse:
    payload = await read_body(request)
    async with request.app[SESSIONMAKER]() as session, session.begin():
        store = UserStore(session, writer_of(request))
        row = await store.replace(request.match_info["id"], payload, if_match(request))
        return await _respond(request, session, row)


@scim_view
async def patch_user(request: web.Request) -> web.StreamResponse:
    body = await read_body(request)
    async with request.app[SESSIONMAKER]() as session, session.begin():
        store = UserStore(session, writer_of(request))
        row = await store.patch(request.match_info["id"], body, if_match(request))
        return await _respond(request, session, row)


@scim_view
async def delete_user(request: web.Request) -> web.StreamResponse:
    async with request.app[SESSIONMAKER]() as session, session.begin():
        await UserStore(session, writer_of(request)).delete(
            request.match_info["id"], if_match(request)
        )
    return web.Response(status=204)


def setup(app: web.Application, prefix: str) -> None:
    add_routes(
        app,
        [
            web.post(f"{prefix}/Users/.search", scim_operation(search_users, "User", "search")),
            web.get(f"{prefix}/Users", scim_operation(list_users, "User", "list")),
            web.post(f"{prefix}/Users", scim_operation(create_user, "User", "create")),
            web.get(f"{prefix}/Users/{{id}}", scim_operation(get_user, "User", "get")),
            web.put(f"{prefix}/Users/{{id}}", scim_operation(replace_user, "User", "replace")),
            web.patch(f"{prefix}/Users/{{id}}", scim_operation(patch_user, "User", "patch")),
            web.delete(f"{prefix}/Users/{{id}}", scim_operation(delete_user, "User", "delete")),
        ],
    )
