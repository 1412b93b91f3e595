"""``/admin/v1/accounts``: list, show, create accounts; workload creds; revocations."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from resolver.accounts import service
from resolver.admin.bodies import json_object, optional_str, required_str
from resolver.appkeys import SEALER, SESSIONMAKER, SETTINGS
from resolver.db.models import Account
from resolver.durations import parse_duration
from resolver.errors import ValidationError
from resolver.http.auth import actor_of, authenticate
from resolver.http.handling import add_routes
from resolver.http.pushing import wake_pusher
from resolver.policy.revocations import revocation_summary


def account_json(account: Account) -> dict[str, Any]:
    """What the admin API shows of an account (never a seed, sealed or not)."""
    return {
        "name": account.name,
        "public_key": account.public_key,
        "managed_here": service.is_managed_here(account),
        "is_system": account.is_system,
        "spec": account.spec or {},
        "jti": account.jti,
        "issued_at": account.issued_at,
        "expires_at": account.expires_at,
        "created_at": account.created_at.isoformat() if account.created_at else None,
    }


async def list_accounts(request: web.Request) -> web.Response:
    await authenticate(request, "admin:read")
    async with request.app[SESSIONMAKER]() as session:
        accounts = await service.list_accounts(session)
    return web.json_response({"accounts": [account_json(a) for a in accounts]})


async def get_account(request: web.Request) -> web.Response:
    await authenticate(request, "admin:read")
    budget = request.app[SETTINGS].accounts.jwt_size_budget_bytes
    async with request.app[SESSIONMAKER]() as session:
        account = await service.get_account(session, request.match_info["ref"])
        # How full the JWT is: revocations cost about 93 bytes each (see policy.revocations).
        size = await revocation_summary(session, account, budget=budget)
    return web.json_response({**account_json(account), "size": size})


async def create_account(request: web.Request) -> web.Response:
    await authenticate(request, "admin")
    body = await json_object(request, allowed={"name", "spec"})
    name = required_str(body, "name")
    app = request.app
    async with app[SESSIONMAKER]() as session, session.begin():
        account = await service.create_account(
            session,
            app[SEALER],
            app[SETTINGS],
            name=name,
            spec=body.get("spec"),
            actor=actor_of(request),
        )
    wake_pusher(app)
    location = f"/admin/v1/accounts/{account.public_key}"
    return web.json_response(account_json(account), status=201, headers={"Location": location})


async def issue_user(request: web.Request) -> web.Response:
    await authenticate(request, "admin")
    body = await json_object(request, allowed={"name", "ttl"})
    name = required_str(body, "name")
    if "ttl" not in body:
        raise ValidationError("'ttl' is required, like 3600, 30m, 1h or 7d")
    ttl = parse_duration(body["ttl"])
    app = request.app
    async with app[SESSIONMAKER]() as session, session.begin():
        account = await service.get_account(session, request.match_info["ref"])
        creds, issued = await service.issue_workload_creds(
            session, app[SEALER], account, name=name, ttl_seconds=ttl, actor=actor_of(request)
        )
    return web.json_response(
        {
            "account": account.public_key,
            "name": issued.name,
            "user_key": issued.public_key,
            "issued_at": issued.issued_at,
            "expires_at": issued.expires_at,
            "creds": creds,
        },
        status=201,
        # The body holds a seed: no cache anywhere may keep it.
        headers={"Cache-Control": "no-store"},
    )


async def revoke(request: web.Request) -> web.Response:
    await authenticate(request, "admin")
    body = await json_object(request, allowed={"user_key", "reason"})
    user_key = required_str(body, "user_key")
    reason = optional_str(body, "reason")
    app = request.app
    async with app[SESSIONMAKER]() as session, session.begin():
        account = await service.get_account(session, request.match_info["ref"])
        revoked_at = await service.revoke_user_key(
            session,
            app[SEALER],
            app[SETTINGS],
            account,
            user_key,
            actor=actor_of(request),
            reason=reason,
        )
    wake_pusher(app)
    return web.json_response(
        {
            "account": account.public_key,
            "user_key": user_key,
            "revoked_at": revoked_at,
            "jti": account.jti,
        }
    )


async def update_account(request: web.Request) -> web.Response:
    await authenticate(request, "admin")
    body = await json_object(request, allowed={"spec"})
    if not isinstance(body.get("spec"), dict):
        raise ValidationError("'spec' is required: an object of the fields to change")
    app = request.app
    async with app[SESSIONMAKER]() as session, session.begin():
        account = await service.get_account(session, request.match_info["ref"])
        changed = await service.update_account(
            session, app[SEALER], app[SETTINGS], account, body["spec"], actor=actor_of(request)
        )
    if changed:
        wake_pusher(app)
    return web.json_response({**account_json(account), "resigned": changed})


async def delete_account(request: web.Request) -> web.Response:
    await authenticate(request, "admin")
    app = request.app
    async with app[SESSIONMAKER]() as session, session.begin():
        account = await service.get_account(session, request.match_info["ref"])
        await service.delete_account(
            session, app[SEALER], app[SETTINGS], account, actor=actor_of(request)
        )
    wake_pusher(app)
    return web.Response(status=204)


def setup(app: web.Application) -> None:
    add_routes(
        app,
        [
            web.get("/admin/v1/accounts", list_accounts),
            web.post("/admin/v1/accounts", create_account),
            web.get("/admin/v1/accounts/{ref}", get_account),
            web.patch("/admin/v1/accounts/{ref}", update_account),
            web.delete("/admin/v1/accounts/{ref}", delete_account),
            web.post("/admin/v1/accounts/{ref}/users", issue_user),
            web.post("/admin/v1/accounts/{ref}/revocations", revoke),
        ],
    )
