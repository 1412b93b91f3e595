"""``/scim/v2/Groups``: list, search, get, create, replace, patch, delete.

Members are streamed from the join table straight into the response (never one list in
memory), and not read at all when the client leaves them out (``excludedAttributes=members``,
as Entra does).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession

from resolver.appkeys import SESSIONMAKER
from resolver.db.models import Group
from resolver.http.handling import add_routes, scim_operation
from resolver.scim.groups_store import GroupStore
from resolver.scim.render import Locations, Projection, etag, group_document
from resolver.scim.resources import GROUP_SCHEMA
from resolver.scim.views_common import (
    ListQuery,
    encode_with_members,
    if_match,
    list_chunks,
    locations,
    not_modified,
    projection_of,
    query_params,
    read_body,
    scim_view,
    search_body,
    stream_response,
    writer_of,
)


def group_chunks(
    store: GroupStore, row: Group, projection: Projection, where: Locations
) -> AsyncIterator[bytes]:
    doc = projection.apply(group_document(row, where))
    members = (lambda: store.members(row.id)) if projection.wants("members") else None
    return encode_with_members(doc, members, projection, where)


async def run_list(request: web.Request, params: dict[str, Any]) -> web.StreamResponse:
    query = ListQuery.parse(params, core=GROUP_SCHEMA)
    where = locations(request)
    async with request.app[SESSIONMAKER]() as session:
        store = GroupStore(session)
        total, rows = await store.list(query.filter, query.page)
        items = [group_chunks(store, row, query.projection, where) for row in rows]
        return await stream_response(request, list_chunks(total, query.page, items))


@scim_view
async def list_groups(request: web.Request) -> web.StreamResponse:
    return await run_list(request, query_params(request))


@scim_view
async def search_groups(request: web.Request) -> web.StreamResponse:
    return await run_list(request, search_body(await read_body(request)))


async def _respond(
    request: web.Request, session: AsyncSession, row: Group, *, status: int = 200
) -> web.StreamResponse:
    projection = projection_of(query_params(request), GROUP_SCHEMA, ())
    where = locations(request)
    headers = {"ETag": etag(row.version), "Location": where.group(row.id)}
    chunks = group_chunks(GroupStore(session), row, projection, where)
    return await stream_response(request, chunks, status=status, headers=headers)


@scim_view
async def get_group(request: web.Request) -> web.StreamResponse:
    async with request.app[SESSIONMAKER]() as session:
        row = await GroupStore(session).get(request.match_info["id"])
        return not_modified(request, row.version) or await _respond(request, session, row)


@scim_view
async def create_group(request: web.Request) -> web.StreamResponse:
    payload = await read_body(request)
    async with request.app[SESSIONMAKER]() as session:
        async with session.begin():
            row = await GroupStore(session, writer_of(request)).create(payload)
        return await _respond(request, session, row, status=201)


@scim_view
async def replace_group(request: web.Request) -> web.StreamResponse:
    payload = await read_body(request)
    async with request.app[SESSIONMAKER]() as session:
        async with session.begin():
            store = GroupStore(session, writer_of(request))
            row = await store.replace(request.match_info["id"], payload, if_match(request))
        return await _respond(request, session, row)


@scim_view
async def patch_group(request: web.Request) -> web.StreamResponse:
    body = await read_body(request)
    async with request.app[SESSIONMAKER]() as session:
        async with session.begin():
            store = GroupStore(session, writer_of(request))
            row = await store.patch(request.match_info["id"], body, if_match(request))
        params = query_params(request)
        if "attributes" in params or "excludedAttributes" in params:
            return await _respond(request, session, row)
    # Entra expects 204 here, and a large group's member list is nobody's business.
    return web.Response(status=204, headers={"ETag": etag(row.version)})


@scim_view
async def delete_group(request: web.Request) -> web.StreamResponse:
    async with request.app[SESSIONMAKER]() as session, session.begin():
        store = GroupStore(session, writer_of(request))
        await store.delete(request.match_info["id"], if_match(request))
    return web.Response(status=204)


def setup(app: web.Application, prefix: str) -> None:
    add_routes(
        app,
        [
            web.post(f"{prefix}/Groups/.search", scim_operation(search_groups, "Group", "search")),
            web.get(f"{prefix}/Groups", scim_operation(list_groups, "Group", "list")),
            web.post(f"{prefix}/Groups", scim_operation(create_group, "Group", "create")),
            web.get(f"{prefix}/Groups/{{id}}", scim_operation(get_group, "Group", "get")),
            web.put(f"{prefix}/Groups/{{id}}", scim_operation(replace_group, "Group", "replace")),
            web.patch(f"{prefix}/Groups/{{id}}", scim_operation(patch_group, "Group", "patch")),
            web.delete(f"{prefix}/Groups/{{id}}", scim_operation(delete_group, "Group", "delete")),
        ],
    )
