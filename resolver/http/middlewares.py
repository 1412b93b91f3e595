"""The one request middleware: request id, access log line, and error mapping.

One layer on purpose: each aiohttp middleware layer costs about as much as serving a cached
account JWT (the hottest path: nats-server fetching accounts), so the request id, the access
log and ``resolver.http.errors.call_mapping_errors`` share one.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time

from aiohttp import web

from resolver.http.errors import call_mapping_errors
from resolver.http.requestid import (
    REQUEST_ID_HEADER,
    REQUEST_ID_KEY,
    VALID_ID,
    Handler,
    request_id,
)
from resolver.logs import request_id_var

__all__ = ["REQUEST_ID_HEADER", "request_id", "request_middleware"]

log = logging.getLogger("resolver.http")

# Generated ids: a random per-process prefix and a counter. Unique across replicas and
# restarts like a UUID, without a getrandom() system call on every request.
_ID_PREFIX = secrets.token_hex(8)
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


@web.middleware
async def request_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Take ``X-Request-ID`` or make one, expose it to logs, map errors, echo the id."""
    given = request.headers.get(REQUEST_ID_HEADER, "")
    rid = given if given and VALID_ID.match(given) else new_request_id()
    request[REQUEST_ID_KEY] = rid
    token = request_id_var.set(rid)
    started = time.perf_counter()
    status = 500
    try:
        response = await call_mapping_errors(request, handler)
        status = response.status
    except web.HTTPException as exc:  # redirects and bodiless statuses pass through
        status = exc.status
        exc.headers[REQUEST_ID_HEADER] = rid
        raise
    finally:
        # Checked first: building ``extra`` (the peer address above all) costs about a tenth
        # of serving a cached JWT, for a line that is dropped when the level is WARNING.
        if log.isEnabledFor(logging.INFO):
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
        request_id_var.reset(token)
    response.headers[REQUEST_ID_HEADER] = rid
    return response
