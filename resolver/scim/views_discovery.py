"""``/ServiceProviderConfig``, ``/ResourceTypes``, ``/Schemas`` and the root ``/.search``."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from resolver.appkeys import SESSIONMAKER, SETTINGS
from resolver.http.handling import add_routes
from resolver.scim import discovery
from resolver.scim.errors import InvalidFilterError, ScimNotFoundError
from resolver.scim.groups_store import GroupStore
from resolver.scim.resources import (
    ENTERPRISE_SCHEMA,
    GROUP_SCHEMA,
    LIST_RESPONSE_SCHEMA,
    USER_SCHEMA,
)
from resolver.scim.storage import Page
from resolver.scim.users_store import UserStore
from resolver.scim.views_common import (
    ListQuery,
    list_chunks,
    locations,
    one,
    read_body,
    scim_response,
    scim_view,
    search_body,
    stream_response,
)


def _base(request: web.Request) -> str:
    return locations(request).base


def _list(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "schemas": [LIST_RESPONSE_SCHEMA],
        "totalResults": len(items),
        "startIndex": 1,
        "itemsPerPage": len(items),
        "Resources": items,
    }


@scim_view
async def service_provider_config(request: web.Request) -> web.StreamResponse:
    limit = request.app[SETTINGS].server.max_body_bytes
    return scim_response(discovery.service_provider_config(_base(request), limit))


@scim_view
async def list_resource_types(request: web.Request) -> web.StreamResponse:
    return scim_response(_list(list(discovery.resource_types(_base(request)).values())))


@scim_view
async def get_resource_type(request: web.Request) -> web.StreamResponse:
    found = discovery.resource_types(_base(request)).get(request.match_info["id"])
    if found is None:
        raise ScimNotFoundError("no such resource type")
    return scim_response(found)


@scim_view
async def list_schemas(request: web.Request) -> web.StreamResponse:
    return scim_response(_list(list(discovery.schemas(_base(request)).values())))


@scim_view
async def get_schema(request: web.Request) -> web.StreamResponse:
    found = discovery.schemas(_base(request)).get(request.match_info["id"])
    if found is None:
        raise ScimNotFoundError("no such schema")
    return scim_response(found)


@scim_view
async def search_all(request: web.Request) -> web.StreamResponse:
    """``POST /.search`` over users, then groups, as one stably ordered, paged list.

    A filter naming an attribute only one type has matches nothing of the other type; one
    that fits neither is 400 invalidFilter.
    """
    from resolver.scim.views_groups import group_chunks
    from resolver.scim.views_users import render_users

    params = search_body(await read_body(request))
    user_query = ListQuery.parse(params, core=USER_SCHEMA, extensions=(ENTERPRISE_SCHEMA,))
    group_query = ListQuery.parse(params, core=GROUP_SCHEMA)
    page = user_query.page
    where = locations(request)
    async with request.app[SESSIONMAKER]() as session:
        users, groups = UserStore(session), GroupStore(session)
        errors: list[InvalidFilterError] = []
        user_total, user_rows = 0, []
        try:
            user_total, user_rows = await users.list(user_query.filter, page)
        except InvalidFilterError as exc:
            errors.append(exc)
        group_page = Page(max(1, page.start_index - user_total), page.count - len(user_rows))
        group_total, group_rows = 0, []
        try:
            group_total, group_rows = await groups.list(group_query.filter, group_page)
        except InvalidFilterError as exc:
            errors.append(exc)
        if len(errors) == 2:
            raise errors[0]
        docs = await render_users(users, request, user_rows, user_query.projection)
        items = [one(d) for d in docs] + [
            group_chunks(groups, row, group_query.projection, where) for row in group_rows
        ]
        chunks = list_chunks(user_total + group_total, page, items)
        return await stream_response(request, chunks)


def setup(app: web.Application, prefix: str) -> None:
    add_routes(
        app,
        [
            web.get(f"{prefix}/ServiceProviderConfig", service_provider_config),
            web.get(f"{prefix}/ResourceTypes", list_resource_types),
            web.get(f"{prefix}/ResourceTypes/{{id}}", get_resource_type),
            web.get(f"{prefix}/Schemas", list_schemas),
            web.get(f"{prefix}/Schemas/{{id}}", get_schema),
            web.post(f"{prefix}/.search", search_all),
        ],
    )
