"""Request id and access logging. The error mapping lives in ``resolver.http.errors``."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from resolver.logs import request_id_var

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_KEY = web.RequestKey("request_id", str)
# Accept a caller's id only when it is short and harmless in a log line.
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")

log = logging.getLogger("resolver.http")


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Take ``X-Request-ID`` or make one, expose it to logs and echo it on the response."""
    given = request.headers.get(REQUEST_ID_HEADER, "")
    request_id = given if _VALID_ID.match(given) else uuid.uuid4().hex
    request[REQUEST_ID_KEY] = request_id
    token = request_id_var.set(request_id)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
    except web.HTTPException as exc:
        status = exc.status
        exc.headers[REQUEST_ID_HEADER] = request_id
        raise
    finally:
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
    response.headers[REQUEST_ID_HEADER] = request_id
    return response


def request_id(request: web.Request) -> str | None:
    return request.get(REQUEST_ID_KEY)
