"""The request id: taken from ``X-Request-ID`` when sane, else generated; read by logs."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_KEY = web.RequestKey("request_id", str)
# Accept a caller's id only when it is short and harmless in a log line.
VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")


def request_id(request: web.Request) -> str | None:
    return request.get(REQUEST_ID_KEY)
