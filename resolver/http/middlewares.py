"""The one request middleware: request id, access log line, and error mapping.

One layer on purpose: each aiohttp middleware layer costs about as much as serving a cached
account JWT (the hottest path: nats-server fetching accounts), so the request id, the access
log and ``resolver.http.errors.call_mapping_errors`` share one.

A handler may also carry a *fast path* (``with_fast_path``): a plain function that answers
the common case synchronously, or returns None to let the handler run. The middleware calls
it first, which skips the coroutine layers between it and the handler (aiohttp adds one of
its own behind every middleware stack). Only the account JWT GET uses it: serving a cached
JWT is so little work that those layers were a fifth of its cost.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from collections.abc import Callable

from aiohttp import web

from resolver.http.errors import error_response
from resolver.http.requestid import (
    REQUEST_ID_HEADER,
    REQUEST_ID_KEY,
    VALID_ID,
    Handler,
    request_id,
)
from resolver.logs import request_id_var

__all__ = ["REQUEST_ID_HEADER", "request_id", "request_middleware", "with_fast_path"]

log = logging.getLogger("resolver.http")

# Generated ids: a random per-process prefix and a counter. Unique across replicas and
# restarts like a UUID, without a getrandom() system call on every request.
_ID_PREFIX = secrets.token_hex(8)
_ID_COUNTER = itertools.count(1)


FastPath = Callable[[web.Request], web.StreamResponse | None]
_FAST_PATH_ATTR = "_resolver_fast_path"


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


def with_fast_path(fast: FastPath) -> Callable[[Handler], Handler]:
    """Decorate a handler with ``fast``: tried first; it must not raise or log, and returns
    None for anything but the plain case, which the handler then serves as usual."""

    def decorate(handler: Handler) -> Handler:
        setattr(handler, _FAST_PATH_ATTR, fast)
        return handler

    return decorate


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


@web.middleware
async def request_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Take ``X-Request-ID`` or make one, expose it to logs, map errors, echo the id."""
    given = request.headers.get(REQUEST_ID_HEADER, "")
    rid = given if given and VALID_ID.match(given) else new_request_id()
    fast: FastPath | None = getattr(request.match_info.handler, _FAST_PATH_ATTR, None)
    if fast is not None:
        started = time.perf_counter()
        answered = fast(request)
        if answered is not None:
            answered.headers[REQUEST_ID_HEADER] = rid
            if log.isEnabledFor(logging.INFO):
                token = request_id_var.set(rid)  # the log line carries it, as on the slow path
                _access_log(request, answered.status, started)
                request_id_var.reset(token)
            return answered
    request[REQUEST_ID_KEY] = rid
    token = request_id_var.set(rid)
    started = time.perf_counter()
    status = 500
    try:
        try:
            response = await handler(request)
        except Exception as exc:
            response = error_response(request, exc)
        status = response.status
    except web.HTTPException as exc:  # redirects and bodiless statuses pass through
        status = exc.status
        exc.headers[REQUEST_ID_HEADER] = rid
        raise
    finally:
        # Checked first: building ``extra`` (the peer address above all) costs about a tenth
        # of serving a cached JWT, for a line that is dropped when the level is WARNING.
        if log.isEnabledFor(logging.INFO):
            _access_log(request, status, started)
        request_id_var.reset(token)
    response.headers[REQUEST_ID_HEADER] = rid
    return response
