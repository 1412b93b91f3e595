"""Auth callout: nats-server asks who a connecting client is; ``exchange_many`` answers.

Protocol facts, read in nats-server ``server/auth.go``, ``server/auth_callout.go``,
``server/auth_callout_test.go``, ``server/jwt.go``, ``server/accounts.go`` and nats-io/jwt
``v2/authorization_claims.go``, ``v2/account_claims.go``; nkeys ``xkeys.go``. Operator mode
(accounts from our URL resolver), nats-server 2.10+ (``default_sentinel``: 2.11.2+):

- Who is called out: a client whose user JWT belongs to an account with external
  authorization (its JWT's ``authorization.auth_users`` is not empty), unless the client's
  auth user (its JWT's subject, or the CONNECT ``user`` when one is given) is one of the
  ``auth_users``. The JWT goes through the normal user checks first (account looked up,
  issuer known to it, signature over the nonce unless it is a bearer JWT), so a client
  presents a user JWT of the auth account: the "sentinel". A client with no JWT at all is
  refused ("Authentication requires a user JWT") unless the server has
  ``default_sentinel: <JWT>`` (2.11.2+), which it then uses for that client; it must be a
  bearer JWT (``jwt.go validateTrustedOperators``, ``auth.go
  processClientOrLeafAuthentication``).
- The CONNECT fields are passed on as they are: ``connect_opts`` carries ``jwt`` (the
  sentinel), ``auth_token``, ``user``, ``pass``, ``name``, ``lang``, ``version``... The
  server does not interpret ``auth_token``/``pass`` in operator mode; they are ours to read.
- The request goes to ``$SYS.REQ.USER.AUTH`` *in the auth account* (the account of the
  sentinel), with a reply subject on a server inbox; only users of that account receive it,
  and the server adds a publish deny on that subject for every client bound to the account.
  The answer must come within the auth timeout (2 s by default) or the client is refused.
- The request is an ``authorization_request`` JWT signed by the server's own nkey (``iss`` =
  ``server_id.id``, an ``N...`` key), ``sub`` = the auth account, ``aud`` =
  ``nats-authorization-request``, ``exp`` = now + auth timeout; ``nats`` holds
  ``server_id`` {name, host, id, version, cluster, tags, xkey}, ``user_nkey`` (a fresh user
  key the server made for this connection), ``client_info`` {host, id, user, name, tags,
  name_tag, kind, type, mqtt_id, nonce}, ``connect_opts`` and ``client_tls``.
- Encryption: when the auth account's JWT has ``authorization.xkey``, the request body is
  ``xkv1`` + nonce + box sealed with the server's curve key to that xkey, and the header
  ``Nats-Server-Xkey`` names the server's curve public key (equal to ``server_id.xkey``).
  The answer may be encrypted back to that key (the server opens anything that does not
  start with ``eyJ``), or be a plain JWT.
- The answer is an ``authorization_response`` JWT: ``sub`` = ``user_nkey``, ``aud`` =
  ``server_id.id``, ``nats.jwt`` = the user JWT or ``nats.error`` = a reason (exactly one),
  issued by an account key. For a plain answer in operator mode the issuer (or
  ``nats.issuer_account``) must be the auth account or one of its signing keys; an
  encrypted answer skips that check. An error, a bad answer or no answer refuses the
  client: it sees "Authorization Violation", the server logs our reason.
- The user JWT: ``sub`` = ``user_nkey``; in operator mode ``aud`` is not used (placement
  comes from the issuer); the issuer, or ``issuer_account`` when a signing key signed it,
  names the target account, which must be the auth account or listed in
  ``allowed_accounts`` (``"*"`` alone allows every account). The server then checks the
  signing key against the target account JWT it has loaded (a scoped key's template gives
  the permissions), expiry, connection types; the connection expires with the JWT. The
  request's ``user_nkey`` and the JWT's ``iat`` are remembered, so a later account update
  revoking that key closes the connection ("User Authentication Revoked"); at connect the
  server checks no revocation for a callout user: refusing revoked people is our decision.

Here: the token is the CONNECT ``auth_token``, else ``pass``; with ``pass``, ``user`` names
the account wanted (else the only account the identity reaches). The decision is
``exchange_many``'s, with ``public_key`` = ``user_nkey`` and ``via="callout"``. No aiohttp,
no NATS client: ``callout_ctx`` owns the connection, ``CredentialIssuer`` the transactions.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from resolver.audit.service import account_key_of, record
from resolver.credentials.callout_keys import CalloutKeys
from resolver.credentials.exchange import (
    Ask,
    CredentialRequest,
    IssuedCredentials,
    refusal_actor,
    refused_user,
)
from resolver.credentials.identity import Identity, IdentityVerifier
from resolver.credentials.issuer import CredentialIssuer
from resolver.errors import ResolverError
from resolver.metrics import CREDENTIALS_REFUSED
from resolver.natsjwt import (
    JWTError,
    XKeyError,
    decode,
    encode,
    is_public_key,
    xkey_open,
    xkey_seal,
)
from resolver.natsjwt.xkeys import is_sealed
from resolver.sealing import Sealer

AUTH_CALLOUT_SUBJECT = "$SYS.REQ.USER.AUTH"
XKEY_HEADER = "Nats-Server-Xkey"
REQUEST_AUDIENCE = "nats-authorization-request"
#: A request is answered up to this long after its ``exp`` (clocks of servers and of this
#: host differ a little); later, the server gave up long ago.
CLOCK_SKEW_SECONDS = 30
#: The longest reason sent back (nats-server logs it; the client only sees a violation).
MAX_REASON = 200
NOTHING_TO_VERIFY = "no IdP token: connect with your IdP token as the token, or as the password"


class CalloutRequestError(Exception):
    """Not a request that can be answered (undecryptable, unsigned, malformed).

    Nothing is sent back: without a verified ``user_nkey`` and server id no answer would be
    accepted anyway, and the server refuses the client when its auth timeout passes.
    """


class CalloutRefusedError(Exception):
    """The client may not connect; ``reason`` is safe to send and to audit."""

    def __init__(
        self, reason: str, identity: Identity | None = None, *, code: str = "unauthenticated"
    ) -> None:
        super().__init__(reason)
        self.reason = reason[:MAX_REASON]
        self.identity = identity
        #: The refusal's kind, as ``ResolverError.code`` (for the metrics).
        self.code = code


@dataclass(frozen=True)
class AuthRequest:
    """A verified authorization request: who asks (the server) and for whom (the client)."""

    server_id: str
    server_name: str
    #: Where the answer is encrypted to; None when the request came in plain.
    reply_xkey: str | None
    user_nkey: str
    client_host: str | None
    client_id: int | None
    client_name: str | None
    #: The CONNECT ``user`` given with a password: the account the client wants.
    account: str | None
    token: str | None = field(repr=False)
    expires_at: int | None
    #: Seconds the server waits for the answer (its request's exp - iat, both from the
    #: server's clock, so no skew between the clocks matters); None if it did not say.
    answer_within: int | None = None

    def audit_details(self) -> dict[str, Any]:
        """Who connected from where, for the audit log (never the token)."""
        return {
            "via": "callout",
            "server": self.server_name or self.server_id,
            "client_id": self.client_id,
            "client_name": self.client_name,
            "user_key": self.user_nkey,
            "account": self.account,
        }


class CalloutResponder:
    """Reads requests and writes answers with the auth account's keys (seeds sealed)."""

    def __init__(self, keys: CalloutKeys, sealer: Sealer) -> None:
        self.keys = keys
        self._sealer = sealer

    def read(
        self, data: bytes, headers: Mapping[str, str] | None, *, now: int | None = None
    ) -> AuthRequest:
        """Decrypt (when sealed) and verify a request; ``CalloutRequestError`` if it is not one."""
        when = int(time.time()) if now is None else now
        server_xkey = (headers or {}).get(XKEY_HEADER)
        if is_sealed(data):
            if not server_xkey:
                raise CalloutRequestError(f"encrypted request without a {XKEY_HEADER} header")
            try:
                data = xkey_open(data, self._sealer.open(self.keys.xkey_seed_sealed), server_xkey)
            except XKeyError as exc:
                raise CalloutRequestError(f"cannot decrypt the request: {exc}") from None
        else:
            # Plain: the auth account JWT this server has carries no xkey (an older one).
            server_xkey = None
        try:
            decoded = decode(data, expected_type="authorization_request")
        except JWTError as exc:
            raise CalloutRequestError(f"not an authorization request: {exc}") from None
        claims, nats = decoded.claims, decoded.nats
        server = _object(nats.get("server_id"))
        server_id = server.get("id")
        if decoded.issuer != server_id or not is_public_key(server_id, "server"):
            raise CalloutRequestError("the request is not signed by the server it names")
        if claims.get("aud") != REQUEST_AUDIENCE:
            raise CalloutRequestError("the request's audience is not nats-authorization-request")
        if server_xkey is not None and server.get("xkey") != server_xkey:
            raise CalloutRequestError(f"{XKEY_HEADER} differs from the signed server xkey")
        user_nkey = nats.get("user_nkey")
        if not is_public_key(user_nkey, "user"):
            raise CalloutRequestError("the request has no valid user_nkey")
        expires_at = decoded.exp
        if expires_at is not None and when > expires_at + CLOCK_SKEW_SECONDS:
            raise CalloutRequestError("the request expired")
        answer_within = None
        if expires_at is not None and decoded.iat and expires_at > decoded.iat:
            answer_within = expires_at - decoded.iat
        client = _object(nats.get("client_info"))
        connect = _object(nats.get("connect_opts"))
        token = _text(connect.get("auth_token")) or _text(connect.get("pass"))
        return AuthRequest(
            server_id=server_id,
            server_name=_text(server.get("name")) or "",
            reply_xkey=server_xkey,
            user_nkey=user_nkey,
            client_host=_text(client.get("host")),
            client_id=client.get("id") if isinstance(client.get("id"), int) else None,
            client_name=_text(client.get("name")),
            account=_text(connect.get("user")) if connect.get("pass") else None,
            token=token,
            expires_at=expires_at,
            answer_within=answer_within,
        )

    def allow(self, request: AuthRequest, user_jwt: str, *, now: int | None = None) -> bytes:
        """The answer that lets the client in with ``user_jwt``."""
        return self._answer(request, {"jwt": user_jwt}, now)

    def refuse(self, request: AuthRequest, reason: str, *, now: int | None = None) -> bytes:
        """The answer that refuses the client, with ``reason`` for the server's log."""
        return self._answer(request, {"error": reason[:MAX_REASON] or "refused"}, now)

    def _answer(self, request: AuthRequest, body: dict[str, str], now: int | None) -> bytes:
        # Field order of AuthorizationResponse: jwt, error, issuer_account, then type/version.
        claims = {
            "aud": request.server_id,
            "sub": request.user_nkey,
            "nats": {
                **body,
                "issuer_account": self.keys.account_public_key,
                "type": "authorization_response",
            },
        }
        token = encode(claims, self._sealer.open(self.keys.signing_seed_sealed), iat=now)
        answer = token.encode("ascii")
        if request.reply_xkey is None:
            return answer
        return xkey_seal(answer, self._sealer.open(self.keys.xkey_seed_sealed), request.reply_xkey)


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


# -- the decision ---------------------------------------------------------------------------


async def identify(verifier: IdentityVerifier, request: AuthRequest) -> Identity:
    """The identity the request's token proves; ``CalloutRefusedError`` when it proves none.

    Called before any transaction: fetching the IdP's keys must not hold a connection.
    """
    if not request.token:
        raise CalloutRefusedError(NOTHING_TO_VERIFY)
    try:
        return await verifier.verify_token(request.token)
    except ResolverError as exc:
        raise CalloutRefusedError(str(exc)) from None


async def decide(
    issuer: CredentialIssuer,
    identity: Identity,
    request: AuthRequest,
    *,
    request_id: str | None = None,
) -> IssuedCredentials:
    """The user JWT for the connecting client, decided and committed by ``issuer``
    (``exchange_many``'s decision, batched with the requests of the moment).

    Raises ``CalloutRefusedError`` for every refusal; the caller audits it with
    ``record_refusal`` in a transaction of its own.
    """
    ask = Ask(
        identity,
        CredentialRequest(public_key=request.user_nkey, account=request.account),
        via="callout",
        source=request.client_host,
        request_id=request_id,
    )
    try:
        return await issuer.issue(ask)
    except ResolverError as exc:
        raise CalloutRefusedError(str(exc), identity, code=exc.code) from None


async def record_refusal(
    session: AsyncSession,
    request: AuthRequest,
    refusal: CalloutRefusedError,
    *,
    request_id: str | None = None,
) -> None:
    """The audit row of a refused connect: the person if the token named one, else anonymous."""
    CREDENTIALS_REFUSED.labels("callout", refusal.code).inc()
    identity = refusal.identity
    details = {**request.audit_details(), "reason": refusal.reason}
    if identity is not None:
        details |= {"idp": identity.idp, "subject": identity.subject}
    actor = refusal_actor(identity, source=request.client_host, request_id=request_id)
    record(
        session,
        actor,
        "credentials.refuse",
        details=details,
        user=await refused_user(session, identity),
        account=await account_key_of(session, request.account),
    )
