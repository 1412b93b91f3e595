"""What every request goes through: request id, access log line, and error mapping.

Not an aiohttp middleware, on purpose. Any middleware stack costs two coroutine layers per
request (the middleware, and one aiohttp adds behind every stack to track the current app),
and on the hottest path, nats-server fetching a cached account JWT, those layers were about a
sixth of the work (bench/resolver_get.py). So features register their routes with
``add_routes``, which wraps each handler once at start-up; ``create_app`` refuses to start if
a route was registered without it, and ``add_fallback`` gives paths that match no route the
same treatment (404/405 in the JSON or SCIM error format).

A handler may also carry a *fast path* (``with_fast_path``): a plain function that answers
the common case synchronously, or returns None to let the handler run. It saves creating
the handler's coroutine; only the account JWT GET uses it.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from collections.abc import Callable, Iterable

from aiohttp import web

from resolver.http.errors import error_response
from resolver.http.requestid import REQUEST_ID_HEADER, REQUEST_ID_KEY, VALID_ID, Handler
from resolver.logs import request_id_var
from resolver.metrics import SCIM_OPERATIONS, observe_http

log = logging.getLogger("resolver.http")

FastPath = Callable[[web.Request], web.StreamResponse | None]
_FAST_PATH_ATTR = "_resolver_fast_path"
_HANDLED_ATTR = "_resolver_handled"
_SCIM_OPERATION_ATTR = "_resolver_scim_operation"

# Generated ids: a random per-process prefix and a counter. Unique across replicas and
# restarts like a UUID, without a getrandom() system call on every request.
_ID_PREFIX = secrets.token_hex(8)
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


def with_fast_path(handler: Handler, fast: FastPath) -> Handler:
    """``handler`` with ``fast`` tried first (a new function: the same handler may serve
    several apps, each with its own fast path). ``fast`` must not raise or log, and returns
    None for anything but the plain case, which the handler then serves as usual."""

    async def handle(request: web.Request) -> web.StreamResponse:
        return await handler(request)

    setattr(handle, _FAST_PATH_ATTR, fast)
    handle.__name__ = getattr(handler, "__name__", "handler")
    handle.__doc__ = handler.__doc__
    return handle


def scim_operation(handler: Handler, resource: str, operation: str) -> Handler:
    """Mark ``handler`` as a SCIM operation: ``handled`` counts it in
    ``nir_scim_operations_total`` with the status it answered."""
    setattr(handler, _SCIM_OPERATION_ATTR, (resource, operation))
    return handler


def _route(request: web.Request) -> str:
    # The template, never the path: ids in paths would make a series per resource.
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def _access_log(request: web.Request, status: int, started: float) -> None:
    log.info(
        "%s %s %s",
        request.method,
        request.path,
        status,
        extra={
            "method": request.method,
            "path": request.path,
            "status": status,
            "duration_ms": round((time.perf_counter() - started) * 1000, 2),
            "remote": request.remote,
        },
    )


def handled(handler: Handler) -> Handler:
    """``handler`` with the request id, the access log line and error mapping around it."""
    if getattr(handler, _HANDLED_ATTR, False):
        return handler
    fast: FastPath | None = getattr(handler, _FAST_PATH_ATTR, None)
    scim: tuple[str, str] | None = getattr(handler, _SCIM_OPERATION_ATTR, None)

    async def handle(request: web.Request) -> web.StreamResponse:
        given = request.headers.get(REQUEST_ID_HEADER, "")
        rid = given if given and VALID_ID.match(given) else new_request_id()
        started = time.perf_counter()
        if fast is not None:
            answered = fast(request)
            if answered is not None:
                answered.headers[REQUEST_ID_HEADER] = rid
                observe_http(
                    request.method, _route(request), answered.status, time.perf_counter() - started
                )
                if log.isEnabledFor(logging.INFO):
                    token = request_id_var.set(rid)  # the log line carries it, as below
                    _access_log(request, answered.status, started)
                    request_id_var.reset(token)
                return answered
        request[REQUEST_ID_KEY] = rid
        token = request_id_var.set(rid)
        status = 500
        try:
            try:
                response = await handler(request)
            except Exception as exc:
                # Raises again what must pass through (redirects, bodiless statuses).
                response = error_response(request, exc)
            status = response.status
        except web.HTTPException as exc:
            status = exc.status
            exc.headers[REQUEST_ID_HEADER] = rid
            raise
        finally:
            observe_http(request.method, _route(request), status, time.perf_counter() - started)
            if scim is not None:
                SCIM_OPERATIONS.labels(scim[0], scim[1], str(status)).inc()
            # Checked first: building ``extra`` (the peer address above all) costs about a
            # tenth of serving a cached JWT, for a line dropped when the level is WARNING.
            if log.isEnabledFor(logging.INFO):
                _access_log(request, status, started)
            request_id_var.reset(token)
        response.headers[REQUEST_ID_HEADER] = rid
        return response

    setattr(handle, _HANDLED_ATTR, True)
    handle.__name__ = getattr(handler, "__name__", "handler")
    handle.__doc__ = handler.__doc__
    return handle


def add_routes(app: web.Application, routes: Iterable[web.RouteDef]) -> None:
    """``app.add_routes`` with every handler wrapped by ``handled``."""
    app.add_routes(
        web.RouteDef(route.method, route.path, handled(route.handler), route.kwargs)
        for route in routes
    )


async def _no_route(request: web.Request) -> web.StreamResponse:
    """Paths no route takes: 405 with ``Allow`` when the path exists for other methods."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is not _no_route_resource(request):
            _, methods = await resource.resolve(request)
            allowed |= methods
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, sorted(allowed))
    raise web.HTTPNotFound()


def _no_route_resource(request: web.Request) -> web.AbstractResource:
    return request.match_info.route.resource  # type: ignore[return-value]


def add_fallback(app: web.Application) -> None:
    """Register last: answers every path no other route took, through ``handled``."""
    app.router.add_route("*", "/{tail:.*}", handled(_no_route))


def check_all_handled(app: web.Application) -> None:
    """Refuse to start when a route bypasses ``handled`` (no request id, raw errors)."""
    bare = [
        f"{route.method} {route.resource.canonical if route.resource else '?'}"
        for route in app.router.routes()
        if not getattr(route.handler, _HANDLED_ATTR, False)
    ]
    if bare:
        raise RuntimeError(
            "routes registered without resolver.http.handling.add_routes: " + ", ".join(bare)
        )
