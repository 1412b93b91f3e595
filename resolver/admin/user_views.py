"""``/admin/v1/users/<id or userName>/credentials`` and ``/admin/v1/explain``."""

from __future__ import annotations

from aiohttp import web

from resolver.accounts.service import get_account
from resolver.admin.bodies import json_object, optional_str, required_str
from resolver.appkeys import SEALER, SESSIONMAKER, SETTINGS
from resolver.durations import parse_duration
from resolver.errors import ValidationError
from resolver.http.auth import actor_of, authenticate
from resolver.http.handling import add_routes
from resolver.http.pushing import wait_pushed, wake_pusher
from resolver.policy.explain import explain
from resolver.policy.user_creds import issue_person_creds


async def issue_credentials(request: web.Request) -> web.Response:
    await authenticate(request, "admin")
    body = await json_object(request, allowed={"account", "ttl", "public_key"})
    account_ref = required_str(body, "account")
    public_key = optional_str(body, "public_key")
    ttl = None
    if body.get("ttl") is not None:
        try:
            ttl = parse_duration(body["ttl"])
        except ValidationError as exc:
            raise ValidationError(f"ttl: {exc}") from None
    app = request.app
    async with app[SESSIONMAKER]() as session, session.begin():
        account = await get_account(session, account_ref)
        issued = await issue_person_creds(
            session,
            app[SEALER],
            app[SETTINGS],
            account,
            request.match_info["ref"],
            ttl_seconds=ttl,
            actor=actor_of(request),
            public_key=public_key,
        )
        account_key, account_jti = account.public_key, account.jti or ""
    pushed = None
    if issued.new_signing_key:
        # Servers that have the account loaded learn the new scoped key only by a push:
        # wait for it, so the credentials work the moment they are handed out.
        wake_pusher(app)
        pushed = await wait_pushed(app, account_key, account_jti)
    answer = {
        "account": account_key,
        "user": issued.user_name,
        "user_key": issued.issued.public_key,
        "roles": list(issued.roles),
        "groups": list(issued.groups),
        "signing_key": issued.issued.signing_key,
        "issued_at": issued.issued.issued_at,
        "expires_at": issued.issued.expires_at,
        "jwt": issued.jwt,
        "new_signing_key": issued.new_signing_key,
        "account_pushed": pushed,
    }
    if issued.creds is not None:
        answer["creds"] = issued.creds
    # The body may hold a seed: no cache anywhere may keep it.
    return web.json_response(answer, status=201, headers={"Cache-Control": "no-store"})


async def explain_access(request: web.Request) -> web.Response:
    await authenticate(request, "admin:read")
    query = request.query
    missing = [k for k in ("user", "account", "subject", "op") if not query.get(k)]
    if missing:
        raise ValidationError(f"missing query parameter(s): {', '.join(missing)}")
    async with request.app[SESSIONMAKER]() as session:
        answer = await explain(
            session, query["user"], query["account"], query["subject"], query["op"]
        )
    return web.json_response(answer)


def setup(app: web.Application) -> None:
    add_routes(
        app,
        [
            web.post("/admin/v1/users/{ref}/credentials", issue_credentials),
            web.get("/admin/v1/explain", explain_access),
        ],
    )
