"""HTTP plumbing of the SCIM surface: auth, bodies, query parameters, responses, errors."""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from resolver.appkeys import SCIM_EVENTS, SETTINGS
from resolver.http.auth import actor_of, authenticate
from resolver.http.pushing import wake_pusher
from resolver.http.requestid import request_id
from resolver.scim.errors import (
    ERROR_SCHEMA,
    InvalidFilterError,
    InvalidSyntaxError,
    InvalidValueError,
    ScimError,
    UnsupportedMediaTypeError,
)
from resolver.scim.filters import Node, parse_filter
from resolver.scim.render import Locations, Projection, etag, member_item
from resolver.scim.resources import LIST_RESPONSE_SCHEMA, SEARCH_REQUEST_SCHEMA, loads
from resolver.scim.storage import (
    DEFAULT_COUNT,
    MAX_COUNT,
    Page,
    ScimWriter,
    etag_matches,
    parse_etags,
)

SCIM_CONTENT_TYPE = "application/scim+json"
ACCEPTED_CONTENT_TYPES = frozenset({SCIM_CONTENT_TYPE, "application/json"})
PREFIX = "/scim/v2"

ScimHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def locations(request: web.Request) -> Locations:
    return Locations(request.app[SETTINGS].public_url + PREFIX)


def writer_of(request: web.Request) -> ScimWriter:
    return ScimWriter(actor_of(request), request.app[SCIM_EVENTS], locations(request))


def _dumps(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def scim_response(
    body: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=_dumps(body),
        status=status,
        content_type=SCIM_CONTENT_TYPE,
        charset="utf-8",
        headers=dict(headers or {}),
    )


def error_response(exc: ScimError) -> web.Response:
    return scim_response(exc.to_body(), status=exc.status)


def render_scim_error(
    request: web.Request, status: int, code: str, message: str
) -> web.StreamResponse:
    """The error renderer for everything under /scim/ (auth, 404/405/413 routes, 500s)."""
    body: dict[str, Any] = {"schemas": [ERROR_SCHEMA], "status": str(status)}
    if status == 400:
        body["scimType"] = "invalidValue"
    body["detail"] = message if status < 500 else f"internal error (request {request_id(request)})"
    return scim_response(body, status=status)


READ_METHODS = frozenset({"GET", "HEAD"})


def scim_view(handler: ScimHandler) -> ScimHandler:
    """Authenticate with the ``scim`` scope and turn ``ScimError`` into SCIM error bodies."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        await authenticate(request, "scim")
        try:
            response = await handler(request)
        except ScimError as exc:
            return error_response(exc)
        if request.method not in READ_METHODS:
            # Committed by now: a removal or deactivation may have queued account pushes,
            # which must go out at once (the pusher's sweep is only the safety net).
            wake_pusher(request.app)
        return response

    return wrapped


async def read_body(request: web.Request) -> Any:
    """The JSON body; 415 for other content types, 413 (aiohttp) beyond the size limit."""
    if request.content_type not in ACCEPTED_CONTENT_TYPES:
        raise UnsupportedMediaTypeError(
            f"send application/scim+json or application/json, not {request.content_type!r}"
        )
    charset = request.charset
    if charset is not None and charset.lower().replace("-", "") != "utf8":
        raise UnsupportedMediaTypeError("the body must be UTF-8")
    return loads(await request.read())


def if_match(request: web.Request) -> list[str] | None:
    return parse_etags(request.headers.get("If-Match"))


def not_modified(request: web.Request, version: int) -> web.Response | None:
    """A 304 when ``If-None-Match`` names the resource's current version, else None."""
    if etag_matches(parse_etags(request.headers.get("If-None-Match")), version):
        return web.Response(status=304, headers={"ETag": etag(version)})
    return None


# --------------------------------------------------------------------------- list queries


def _int_param(name: str, raw: Any, default: int) -> int:
    if raw is None or raw == "":
        return default
    if isinstance(raw, bool):
        raise InvalidValueError(f"{name} must be an integer")
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise InvalidValueError(f"{name} must be an integer, not {str(raw)[:40]!r}") from None


@dataclass(frozen=True)
class ListQuery:
    """A list or search request: filter, page, projection."""

    filter: Node | None
    page: Page
    projection: Projection

    @classmethod
    def parse(
        cls,
        params: Mapping[str, Any],
        *,
        core: str,
        extensions: Iterable[str] = (),
    ) -> ListQuery:
        raw_filter = params.get("filter")
        node = None
        if raw_filter is not None:
            if not isinstance(raw_filter, str):
                raise InvalidFilterError("the filter must be a string")
            node = parse_filter(raw_filter)
        # Bounded so OFFSET always fits the database's integer (a huge one is just past the end).
        start = min(2**31, max(1, _int_param("startIndex", params.get("startIndex"), 1)))
        count = min(MAX_COUNT, max(0, _int_param("count", params.get("count"), DEFAULT_COUNT)))
        return cls(node, Page(start, count), projection_of(params, core, extensions))


def projection_of(params: Mapping[str, Any], core: str, extensions: Iterable[str]) -> Projection:
    return Projection.parse(
        params.get("attributes"),
        params.get("excludedAttributes"),
        core=core,
        extensions=extensions,
    )


def query_params(request: web.Request) -> dict[str, str]:
    """Query parameters, case-insensitively named (last one wins)."""
    names = {"filter", "startindex", "count", "attributes", "excludedattributes"}
    spelled = {
        "startindex": "startIndex",
        "excludedattributes": "excludedAttributes",
    }
    found: dict[str, str] = {}
    for key, value in request.query.items():
        lower = key.lower()
        if lower in names:
            found[spelled.get(lower, lower)] = value
    return found


# --------------------------------------------------------------------------- streaming


MembersSource = Callable[[], AsyncIterator[tuple[str, str | None]]]


async def encode_with_members(
    doc: dict[str, Any],
    members: MembersSource | None,
    projection: Projection,
    where: Locations,
) -> AsyncIterator[bytes]:
    """A resource's JSON with ``members`` written item by item from a database stream."""
    if members is None:
        yield _dumps(doc)
        return
    head = _dumps(doc)[:-1]
    sub = projection.sub("members")
    first = True
    async for user_id, display in members():
        item = _dumps(sub.apply(member_item(user_id, display, where)))
        if first:
            yield head + b',"members":[' + item
            first = False
        else:
            yield b"," + item
    # RFC 7643 §2.5: an empty member list is unassigned, so the key is left out.
    yield head + b"}" if first else b"]}"


async def stream_response(
    request: web.Request,
    chunks: AsyncIterator[bytes],
    *,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> web.StreamResponse:
    response = web.StreamResponse(status=status, headers=dict(headers or {}))
    response.content_type = SCIM_CONTENT_TYPE
    response.charset = "utf-8"
    buffer = bytearray()
    prepared = False
    async for chunk in chunks:
        buffer += chunk
        if len(buffer) >= 65536:
            if not prepared:
                await response.prepare(request)
                prepared = True
            await response.write(bytes(buffer))
            buffer.clear()
    if not prepared:
        # Small enough to send whole, with a Content-Length.
        response.content_length = len(buffer)
        await response.prepare(request)
    await response.write(bytes(buffer))
    await response.write_eof()
    return response


async def list_chunks(
    total: int, page: Page, items: list[AsyncIterator[bytes]]
) -> AsyncIterator[bytes]:
    head = {
        "schemas": [LIST_RESPONSE_SCHEMA],
        "totalResults": total,
        "startIndex": page.start_index,
        "itemsPerPage": len(items),
        "Resources": [],
    }
    # The envelope up to the opening of "Resources" (``[]}`` cut off), then item by item.
    yield _dumps(head)[:-3] + b"["
    for index, item in enumerate(items):
        if index:
            yield b","
        async for chunk in item:
            yield chunk
    yield b"]}"


async def one(doc: dict[str, Any]) -> AsyncIterator[bytes]:
    yield _dumps(doc)


def search_body(payload: Any) -> dict[str, Any]:
    """The parameters of a ``POST .../.search`` body (a SearchRequest message)."""
    if not isinstance(payload, dict):
        raise InvalidSyntaxError("a search body must be a JSON object")
    schemas = next((v for k, v in payload.items() if k.lower() == "schemas"), None)
    if not isinstance(schemas, list) or SEARCH_REQUEST_SCHEMA.lower() not in {
        s.lower() for s in schemas if isinstance(s, str)
    }:
        raise InvalidSyntaxError(f"a search body must list the schema {SEARCH_REQUEST_SCHEMA}")
    spelled = {
        "filter": "filter",
        "startindex": "startIndex",
        "count": "count",
        "attributes": "attributes",
        "excludedattributes": "excludedAttributes",
    }
    found: dict[str, Any] = {}
    for key, value in payload.items():
        name = spelled.get(key.lower())
        if name is not None and value is not None:
            found[name] = value
    return found
