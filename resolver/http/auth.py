"""Bearer-token authentication with scopes, checked per route."""

from __future__ import annotations

from aiohttp import web

from resolver.appkeys import SESSIONMAKER, TOKEN_BUCKETS
from resolver.audit.service import Actor
from resolver.auth.ratelimit import retry_after_seconds
from resolver.auth.tokens import TokenInfo, verify_token
from resolver.errors import AuthenticationError, PermissionDeniedError, RateLimitedError
from resolver.http.requestid import request_id

TOKEN_KEY = web.RequestKey("token", TokenInfo)


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


async def authenticate(request: web.Request, scope: str) -> TokenInfo:
    """The calling token, if it is valid and has ``scope``; else 401/403 via domain errors."""
    presented = bearer_token(request)
    if presented is None:
        raise AuthenticationError("a bearer token is required")
    async with request.app[SESSIONMAKER]() as session:
        info = await verify_token(session, presented)
    if info is None:
        raise AuthenticationError("the bearer token is not valid")
    # Only a valid token has a bucket: garbage cannot fill memory or spend someone's turn.
    wait = request.app[TOKEN_BUCKETS].take(info.name)
    if wait > 0:
        raise RateLimitedError(
            f"too many requests with token {info.name!r}; retry later",
            retry_after_seconds(wait),
        )
    if not info.allows(scope):
        raise PermissionDeniedError(f"this token lacks the {scope!r} scope")
    request[TOKEN_KEY] = info
    return info


def actor_of(request: web.Request) -> Actor:
    """The audit actor of an authenticated request: the token's name, request id, address."""
    token = request.get(TOKEN_KEY)
    return Actor(
        name=token.name if token is not None else "anonymous",
        request_id=request_id(request),
        source=request.remote,
    )
