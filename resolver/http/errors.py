"""The one place where exceptions become HTTP responses.

Domain errors (``resolver.errors``) become JSON ``{"error": code, "message": ...}``. Anything
unexpected is logged with its traceback server-side and answered with a bare 500 that carries
only the request id, never the exception text (it could hold a secret).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web

from resolver import errors
from resolver.http.requestid import REQUEST_ID_HEADER, request_id

log = logging.getLogger("resolver.http.errors")

STATUS_BY_ERROR: dict[type[errors.ResolverError], int] = {
    errors.ValidationError: 400,
    errors.AuthenticationError: 401,
    errors.PermissionDeniedError: 403,
    errors.NotFoundError: 404,
    errors.ConflictError: 409,
    errors.RateLimitedError: 429,
    errors.ConfigError: 500,
    errors.SealingError: 500,
}

#: Renders an error for one surface (SCIM wants its own body): (request, status, code, message).
ErrorRenderer = Callable[[web.Request, int, str, str], web.StreamResponse]
ERROR_RENDERERS = web.AppKey("error_renderers", dict[str, ErrorRenderer])


def register_error_renderer(app: web.Application, prefix: str, renderer: ErrorRenderer) -> None:
    """Let a feature (SCIM) render errors under path ``prefix`` in its own format."""
    app.setdefault(ERROR_RENDERERS, {})[prefix] = renderer


def status_for(exc: errors.ResolverError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return 400


def _json_error(request: web.Request, status: int, code: str, message: str) -> web.Response:
    body = {"error": code, "message": message, "request_id": request_id(request)}
    return web.json_response(body, status=status)


def render_error(request: web.Request, status: int, code: str, message: str) -> web.StreamResponse:
    for prefix, renderer in request.app.get(ERROR_RENDERERS, {}).items():
        if request.path.startswith(prefix):
            return renderer(request, status, code, message)
    return _json_error(request, status, code, message)


def error_response(request: web.Request, exc: Exception) -> web.StreamResponse:
    """The response for an exception a handler raised; re-raises what must pass through.

    Redirects and bodiless HTTP exceptions are aiohttp's to answer, so they are raised
    again; everything else becomes a JSON (or, by prefix, SCIM or plain text) error body.
    """
    if isinstance(exc, errors.ResolverError):
        status = status_for(exc)
        if status >= 500:
            log.error("%s: %s", type(exc).__name__, exc)
        response = render_error(request, status, exc.code, str(exc))
        if isinstance(exc, errors.RateLimitedError):
            response.headers["Retry-After"] = str(exc.retry_after)
        if status == 401:
            # RFC 6750: a token that was presented and refused is an "invalid_token".
            response.headers["WWW-Authenticate"] = (
                'Bearer error="invalid_token"' if exc.code == "invalid_token" else "Bearer"
            )
        return response
    if isinstance(exc, web.HTTPException):
        if exc.status < 400 or exc.empty_body:
            raise exc
        # aiohttp's own 404/405/413 become JSON (or SCIM) too, keeping their headers.
        response = render_error(
            request, exc.status, exc.reason.lower().replace(" ", "_"), exc.text or exc.reason
        )
        for name, value in exc.headers.items():
            if name.lower() not in {"content-type", "content-length"}:
                response.headers[name] = value
        return response
    log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
    response = render_error(request, 500, "internal", "internal error")
    rid = request_id(request)
    if rid:
        response.headers[REQUEST_ID_HEADER] = rid
    return response
