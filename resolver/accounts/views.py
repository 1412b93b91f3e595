"""The ``/jwt/v1`` routes nats-server and nsc talk to (nats-account-server compatible).

Errors here are plain text, as the legacy server wrote them: nsc prints the body as is.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from resolver.accounts.cache import AccountJWTCache, CachedJWT
from resolver.accounts.changes import CACHE_INFO_KEY
from resolver.accounts.listener import ChangeListener, asyncpg_dsn
from resolver.accounts.operator import get_operator
from resolver.accounts.presenting import (
    HELP_TEXT,
    NO_CACHE,
    cache_control,
    decoded_text,
    if_none_match,
)
from resolver.accounts.serving import load_served_jwt, pack, requeue_push
from resolver.accounts.upload import apply_upload, prepare_upload
from resolver.appkeys import JWT_CACHE, SESSIONMAKER, SETTINGS
from resolver.errors import NotFoundError, ValidationError
from resolver.http.auth import actor_of, authenticate
from resolver.http.errors import register_error_renderer
from resolver.http.handling import add_routes, with_fast_path
from resolver.http.pushing import wake_pusher
from resolver.natsjwt import is_public_key

JWT_CONTENT_TYPE = "application/jwt"
#: Most JWTs one ``/jwt/v1/pack`` answer carries (the legacy server's limit was configurable).
MAX_PACK = 10_000
#: How long start-up waits for the PostgreSQL listener before serving anyway.
LISTEN_START_TIMEOUT = 5.0


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "").lower() == "true"


def _account_key(request: web.Request) -> str:
    key = request.match_info["key"]
    if not is_public_key(key, "account"):
        raise ValidationError("not a valid account public key")
    return key


async def served_jwt(app: web.Application, account_key: str) -> CachedJWT | None:
    """The account's current JWT, from the cache or the database."""

    async def load() -> CachedJWT | None:
        async with app[SESSIONMAKER]() as session:
            return await load_served_jwt(session, account_key)

    return await app[JWT_CACHE].get_or_load(account_key, load)


async def accounts_root(request: web.Request) -> web.Response:
    # nats-server GETs the base URL at start-up and refuses to start unless it answers 200.
    return web.Response(
        status=200, headers={"Cache-Control": NO_CACHE, "Pragma": "no-cache", "Expires": "0"}
    )


def cached_jwt_server(cache: AccountJWTCache) -> Callable[[web.Request], web.Response | None]:
    """The fast path of ``get_account_jwt`` (see ``with_fast_path``) over ``cache``.

    It answers what nats-server sends (no query, no conditional header) for a cached
    account, and is kept lean on purpose: bench/resolver_get.py compares it with a bare
    aiohttp handler. The cache is bound here rather than looked up on the app per request.
    No key check: only valid keys are ever cached, so a malformed one misses and the
    handler refuses it. raw_path, because query_string would build a yarl URL each time.
    """

    def serve_cached_jwt(request: web.Request) -> web.Response | None:
        if "?" in request.raw_path or "If-None-Match" in request.headers:
            return None
        served = cache.get(request.match_info["key"])
        if served is None:
            return None
        return web.Response(body=served.body, headers=served.headers(int(time.time())))

    return serve_cached_jwt


async def get_account_jwt(request: web.Request) -> web.Response:
    key = _account_key(request)
    served = await served_jwt(request.app, key)
    if served is None:
        raise NotFoundError(f"account {key} not found")
    now = int(time.time())
    if "?" not in request.raw_path and "If-None-Match" not in request.headers:
        return web.Response(body=served.body, headers=served.headers(now))
    if _flag(request, "check") and served.expires_at is not None and served.expires_at < now:
        raise NotFoundError(f"account {key} JWT has expired")
    headers = {
        "ETag": served.etag,
        "Cache-Control": cache_control(served.expires_at, now),
    }
    if if_none_match(request.headers.get("If-None-Match"), served.jti):
        return web.Response(status=304, headers=headers)
    if _flag(request, "notify"):
        async with request.app[SESSIONMAKER]() as session, session.begin():
            queued = await requeue_push(session, served)
        if queued:
            wake_pusher(request.app)
    if _flag(request, "decode"):
        return web.Response(text=decoded_text(served.jwt), headers=headers)
    if _flag(request, "text"):
        return web.Response(text=served.jwt, headers=headers)
    return web.Response(body=served.body, content_type=JWT_CONTENT_TYPE, headers=headers)


async def post_account_jwt(request: web.Request) -> web.Response:
    key = _account_key(request)
    body = await request.read()
    async with request.app[SESSIONMAKER]() as session, session.begin():
        upload = await prepare_upload(session, body, key)
        if upload.needs_admin:
            await authenticate(request, "admin")
        await apply_upload(session, upload, actor=actor_of(request))
    wake_pusher(request.app)
    # nsc treats 200 as success and anything else in 2xx as a warning.
    return web.Response(status=200, text=f"account {key} updated\n")


async def get_operator_jwt(request: web.Request) -> web.Response:
    async with request.app[SESSIONMAKER]() as session:
        operator = await get_operator(session)
    if not operator.jwt:
        raise NotFoundError("the operator has no JWT yet")
    return web.Response(
        body=operator.jwt.encode("ascii"),
        content_type=JWT_CONTENT_TYPE,
        headers={"Cache-Control": "no-cache"},
    )


async def get_help(request: web.Request) -> web.Response:
    return web.Response(text=HELP_TEXT)


async def get_pack(request: web.Request) -> web.Response:
    raw = request.query.get("max", "")
    limit = MAX_PACK
    if raw:
        try:
            limit = int(raw)
        except ValueError:
            raise ValidationError(f"bad max parameter {raw!r}") from None
        if not 0 <= limit <= MAX_PACK:
            raise ValidationError(f"bad max parameter {raw!r}: between 0 and {MAX_PACK}")
    async with request.app[SESSIONMAKER]() as session:
        rows = await pack(session, limit)
    text = "".join(f"{public_key}|{token}\n" for public_key, token in rows)
    return web.Response(text=text, headers={"Cache-Control": NO_CACHE})


def _text_error(request: web.Request, status: int, code: str, message: str) -> web.Response:
    return web.Response(status=status, text=f"{message}\n", headers={"Cache-Control": NO_CACHE})


async def jwt_cache_ctx(app: web.Application) -> AsyncIterator[None]:
    """The JWT cache, wired into every session of the app, and on PostgreSQL its listener."""
    cache = app[JWT_CACHE]
    # Sessions carry the cache so a commit that changed a JWT drops it (changes.py).
    app[SESSIONMAKER].configure(info={CACHE_INFO_KEY: cache})
    listener = None
    url = app[SETTINGS].database_url
    if url.startswith("postgresql"):
        listener = ChangeListener(asyncpg_dsn(url), cache)
        listener.start()
        try:
            async with asyncio.timeout(LISTEN_START_TIMEOUT):
                await listener.listening.wait()
        except TimeoutError:
            pass  # serve anyway: entries age out, and the listener keeps retrying
    yield
    if listener is not None:
        await listener.stop()


def setup(app: web.Application) -> None:
    register_error_renderer(app, "/jwt/", _text_error)
    if JWT_CACHE not in app:
        app[JWT_CACHE] = AccountJWTCache()
    app.cleanup_ctx.append(jwt_cache_ctx)
    account_jwt = with_fast_path(get_account_jwt, cached_jwt_server(app[JWT_CACHE]))
    add_routes(
        app,
        [
            web.get("/jwt/v1/help", get_help),
            web.get("/jwt/v1/accounts/", accounts_root),
            web.get("/jwt/v1/accounts", accounts_root),
            web.get("/jwt/v1/accounts/{key}", account_jwt),
            web.post("/jwt/v1/accounts/{key}", post_account_jwt),
            web.get("/jwt/v1/operator", get_operator_jwt),
            # nsc pull asks the v2 path first; the operator JWT is the same on both.
            web.get("/jwt/v2/operator", get_operator_jwt),
            web.get("/jwt/v1/pack", get_pack),
        ],
    )
