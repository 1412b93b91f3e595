"""``GET /admin/v1/audit``: the audit log, filtered, newest first, in keyset pages."""

from __future__ import annotations

from urllib.parse import urlencode

from aiohttp import web

from resolver.appkeys import SESSIONMAKER
from resolver.audit import query
from resolver.http.auth import authenticate
from resolver.http.handling import add_routes


async def list_audit(request: web.Request) -> web.Response:
    """Rows matching ``since``, ``until``, ``actor``, ``user``, ``account``, ``action``,
    ``target``; ``limit`` of them below ``before``. ``next`` is the cursor of the following
    page (null on the last one) and ``next_url`` the same request for it."""
    await authenticate(request, "admin:read")
    found, limit, before = query.filter_from_params(request.query)
    async with request.app[SESSIONMAKER]() as session:
        # One more than asked: whether a next page exists, without a count.
        rows = await query.find_page(session, found, limit=limit + 1, before=before)
    more = len(rows) > limit
    rows = rows[:limit]
    cursor = rows[-1].id if more else None
    next_url = None
    if cursor is not None:
        params = {**found.as_params(), "limit": str(limit), "before": str(cursor)}
        next_url = f"{request.path}?{urlencode(params)}"
    return web.json_response(
        {
            "entries": [query.entry_json(row) for row in rows],
            "next": cursor,
            "next_url": next_url,
        }
    )


def setup(app: web.Application) -> None:
    add_routes(app, [web.get("/admin/v1/audit", list_audit)])
