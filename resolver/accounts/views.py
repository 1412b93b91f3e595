"""The ``/jwt/v1`` routes nats-server and nsc talk to (nats-account-server compatible)."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy import select

from resolver.accounts.operator import get_operator
from resolver.appkeys import SESSIONMAKER
from resolver.db.models import Account
from resolver.natsjwt import is_public_key

NO_CACHE = "no-cache, no-store, must-revalidate"


async def accounts_root(request: web.Request) -> web.Response:
    # nats-server GETs the base URL at start-up and refuses to start unless it answers 200.
    return web.Response(status=200, headers={"Cache-Control": NO_CACHE})


async def get_account_jwt(request: web.Request) -> web.Response:
    key = request.match_info["key"]
    if not is_public_key(key, "account"):
        return web.Response(status=400, text="not a valid account public key\n")
    async with request.app[SESSIONMAKER]() as session:
        account = await session.scalar(
            select(Account).where(Account.public_key == key, Account.deleted_at.is_(None))
        )
    if account is None or account.jwt is None:
        return web.Response(status=404, text=f"account {key} not found\n")
    return web.Response(
        body=account.jwt.encode("ascii"),
        content_type="application/jwt",
        headers={"ETag": f'"{account.jti}"', "Cache-Control": NO_CACHE},
    )


async def get_operator_jwt(request: web.Request) -> web.Response:
    async with request.app[SESSIONMAKER]() as session:
        operator = await get_operator(session)
    return web.Response(body=(operator.jwt or "").encode("ascii"), content_type="application/jwt")


def setup(app: web.Application) -> None:
    app.router.add_get("/jwt/v1/accounts/", accounts_root)
    app.router.add_get("/jwt/v1/accounts", accounts_root)
    app.router.add_get("/jwt/v1/accounts/{key}", get_account_jwt)
    app.router.add_get("/jwt/v1/operator", get_operator_jwt)
