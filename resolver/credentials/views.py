"""``POST /v1/credentials`` and ``GET /v1/credentials/creds``: an IdP identity → NATS creds.

The caller proves who they are with an IdP token (``Authorization: Bearer``), a front
proxy's signed assertion header, or (from a trusted proxy address) a plain identity header;
``resolver.credentials.identity`` decides which. Both routes end in ``exchange_many``.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from resolver.admin.bodies import json_object, optional_str
from resolver.appkeys import CREDENTIAL_ISSUER, IDENTITY_VERIFIER, SESSIONMAKER
from resolver.audit.service import account_key_of, record
from resolver.credentials.exchange import (
    Ask,
    CredentialRequest,
    IssuedCredentials,
    refusal_actor,
    refused_user,
)
from resolver.credentials.identity import PROXY_IDP, Identity
from resolver.durations import parse_duration
from resolver.errors import (
    AuthenticationError,
    ConflictError,
    PermissionDeniedError,
    ResolverError,
    ValidationError,
)
from resolver.http.auth import bearer_token
from resolver.http.handling import add_routes
from resolver.http.pushing import wait_pushed, wake_pusher
from resolver.http.requestid import request_id
from resolver.metrics import CREDENTIALS_REFUSED

log = logging.getLogger("resolver.credentials")
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _roles(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise ValidationError("roles must be a list of role names")
    roles = tuple(item.strip() for item in items if item.strip())
    if not roles:
        raise ValidationError("roles, when given, must name at least one role")
    return roles


def _ttl(value: Any) -> int | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise ValidationError("ttl must be seconds or a duration like 15m or 1h")
    return parse_duration(value)


async def _identify(request: web.Request) -> Identity:
    verifier = request.app[IDENTITY_VERIFIER]
    return await verifier.from_headers(request.headers, request.remote, bearer_token(request))


async def _issue(request: web.Request, wanted: CredentialRequest) -> IssuedCredentials:
    """Verify, then decide and commit (in a batch with the requests of the moment); a
    refusal is audited (in its own transaction) and re-raised."""
    app = request.app
    identity: Identity | None = None
    try:
        identity = await _identify(request)
        ask = Ask(
            identity,
            wanted,
            via="proxy" if identity.idp == PROXY_IDP else "token",
            source=request.remote,
            request_id=request_id(request),
        )
        issued = await app[CREDENTIAL_ISSUER].issue(ask)
    except (AuthenticationError, PermissionDeniedError, ConflictError) as exc:
        await _audit_refusal(request, identity, wanted, exc)
        raise
    if issued.new_signing_key:
        # Servers with the account loaded learn the new scoped key only by a push: wait
        # for it, so the credentials work the moment they are handed out.
        wake_pusher(app)
        await wait_pushed(app, issued.account_public_key, issued.account_jti)
    return issued


async def _audit_refusal(
    request: web.Request,
    identity: Identity | None,
    wanted: CredentialRequest,
    exc: ResolverError,
) -> None:
    via = "proxy" if identity is not None and identity.idp == PROXY_IDP else "token"
    CREDENTIALS_REFUSED.labels(via, exc.code).inc()
    actor = refusal_actor(identity, source=request.remote, request_id=request_id(request))
    details = {"reason": str(exc), "path": request.path}
    if identity is not None:
        details |= {"idp": identity.idp, "subject": identity.subject}
    async with request.app[SESSIONMAKER]() as session, session.begin():
        record(
            session,
            actor,
            "credentials.refuse",
            details=details,
            user=await refused_user(session, identity),
            account=await account_key_of(session, wanted.account),
        )
    log.info("credentials refused for %s: %s", actor.name, exc)


async def issue_jwt(request: web.Request) -> web.Response:
    """The caller's own public key in, a signed user JWT out (the seed never travels)."""
    body = await json_object(request, allowed={"public_key", "account", "roles", "ttl"})
    public_key = optional_str(body, "public_key")
    if not public_key:
        raise ValidationError(
            "public_key is required (your user public key, U...); "
            "GET /v1/credentials/creds makes a key pair for tools that cannot"
        )
    wanted = CredentialRequest(
        public_key=public_key.strip(),
        account=optional_str(body, "account"),
        roles=_roles(body.get("roles")),
        ttl_seconds=_ttl(body.get("ttl")),
    )
    issued = await _issue(request, wanted)
    return web.json_response(
        {
            "jwt": issued.jwt,
            "expires_at": issued.expires_at,
            "name": issued.name,
            "account": issued.account_name,
            "account_public_key": issued.account_public_key,
            "user_public_key": issued.user_public_key,
            "roles": list(issued.roles),
            "groups": list(issued.groups),
        },
        status=201,
        headers=_NO_STORE,
    )


async def issue_creds_file(request: web.Request) -> web.Response:
    """A ready ``.creds`` file with a key pair made here; the seed is returned, never kept."""
    query = request.query
    unknown = sorted(set(query) - {"account", "roles", "ttl"})
    if unknown:
        raise ValidationError(f"unknown query parameters {unknown}; allowed: account, roles, ttl")
    wanted = CredentialRequest(
        public_key=None,
        account=query.get("account") or None,
        roles=_roles(query.get("roles")),
        ttl_seconds=_ttl(query.get("ttl")),
    )
    issued = await _issue(request, wanted)
    assert issued.creds is not None  # no public key was given, so a seed was made
    filename = "".join(c if c.isalnum() or c in "-_." else "_" for c in issued.account_name)
    return web.Response(
        text=issued.creds,
        content_type="text/plain",
        headers={
            **_NO_STORE,
            "Content-Disposition": f'attachment; filename="{filename}.creds"',
            "X-Expires-At": str(issued.expires_at),
        },
    )


def setup(app: web.Application) -> None:
    add_routes(
        app,
        [
            web.post("/v1/credentials", issue_jwt),
            web.get("/v1/credentials/creds", issue_creds_file),
        ],
    )
