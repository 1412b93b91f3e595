"""The auth callout protocol with real nkeys and a real database, no NATS connection.

Requests are built the way nats-server builds them (``server/auth_callout.go``): an
``authorization_request`` JWT signed by the server's nkey, sealed to the auth account's
xkey with the server's own curve key and the ``Nats-Server-Xkey`` header, or plain. The
answers are read back the way the server reads them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import REGISTRY
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from resolver.accounts.service import create_account
from resolver.appkeys import CREDENTIAL_ISSUER, IDENTITY_VERIFIER, SEALER, SESSIONMAKER, SETTINGS
from resolver.config import AuthCalloutSettings, Settings
from resolver.credentials.callout import (
    CLOCK_SKEW_SECONDS,
    XKEY_HEADER,
    CalloutRequestError,
    CalloutResponder,
)
from resolver.credentials.callout_ctx import OVERLOADED, SHED_AFTER_SECONDS, CalloutService
from resolver.credentials.callout_keys import (
    CalloutKeys,
    default_sentinel,
    load_callout_keys,
    service_user_jwt,
    setup_auth_callout,
)
from resolver.credentials.identity import IdentityVerifier
from resolver.credentials.issuer import CredentialIssuer
from resolver.db.models import Account, AuditEntry, IssuedUserKey
from resolver.errors import ConfigError, ConflictError
from resolver.natsjwt import (
    DecodedJWT,
    decode,
    encode,
    new_keypair,
    user_claims,
    xkey_open,
    xkey_seal,
)
from resolver.policy.document import parse_policy
from resolver.policy.plan import plan_policy
from resolver.sealing import Sealer
from tests.accounts.conftest import ADMIN
from tests.credentials.conftest import World
from tests.support.idp import IdpStandIn, make_key

Sessions = async_sessionmaker[AsyncSession]


class FakeServer:
    """What a nats-server holds for the callout: its nkey and its curve key (real keys)."""

    def __init__(self) -> None:
        self.id, self.seed = new_keypair("server")
        self.xkey, self.xkey_seed = new_keypair("curve")

    def request_jwt(
        self,
        auth_account: str,
        *,
        user_nkey: str | None = None,
        connect: dict[str, Any] | None = None,
        exp: int | None = None,
        iat: int | None = None,
        signer: bytes | None = None,
        server_xkey: str | None = None,
        audience: str = "nats-authorization-request",
    ) -> tuple[str, str]:
        """An authorization request JWT and the user nkey it asks about."""
        user = user_nkey or new_keypair("user")[0]
        claims = {
            "aud": audience,
            "exp": exp if exp is not None else int(time.time()) + 2,
            "sub": auth_account,
            "nats": {
                "server_id": {
                    "name": "n1",
                    "host": "127.0.0.1",
                    "id": self.id,
                    "version": "2.15.1",
                    "xkey": server_xkey or self.xkey,
                },
                "user_nkey": user,
                "client_info": {"host": "192.0.2.7", "id": 42, "kind": "Client", "type": "nats"},
                "connect_opts": {"lang": "python3", "version": "2.16.0", "protocol": 1}
                | (connect or {}),
                "type": "authorization_request",
            },
        }
        return encode(claims, signer or self.seed, iat=iat), user

    def sealed(self, request: str, keys: CalloutKeys) -> tuple[bytes, dict[str, str]]:
        """The request as the server sends it when the auth account has an xkey."""
        data = xkey_seal(request.encode(), self.xkey_seed, keys.xkey_public_key)
        return data, {XKEY_HEADER: self.xkey}

    def read_answer(self, data: bytes, keys: CalloutKeys) -> tuple[DecodedJWT, bool]:
        """Open (if sealed) and decode an answer; whether it was encrypted."""
        encrypted = not data.startswith(b"eyJ")
        if encrypted:
            data = xkey_open(data, self.xkey_seed, keys.xkey_public_key)
        return decode(data, expected_type="authorization_response"), encrypted


@pytest.fixture
async def keys(
    sessions: Sessions, sealer: Sealer, settings: Settings, operator: Any
) -> CalloutKeys:
    async with sessions() as session, session.begin():
        await setup_auth_callout(session, sealer, settings, actor=ADMIN)
    async with sessions() as session:
        return await load_callout_keys(session, settings)


@pytest.fixture
async def service(
    settings: Settings, sessions: Sessions, sealer: Sealer, keys: CalloutKeys
) -> AsyncIterator[CalloutService]:
    """The callout's request handling as the service runs it, minus the NATS connection."""
    app = web.Application()
    app[SETTINGS] = settings
    app[SEALER] = sealer
    app[SESSIONMAKER] = sessions
    app[IDENTITY_VERIFIER] = IdentityVerifier(settings)
    issuer = CredentialIssuer(sessions, sealer, settings)
    issuer.start()
    app[CREDENTIAL_ISSUER] = issuer
    yield CalloutService(app, CalloutResponder(keys, sealer))
    await issuer.stop()


async def audit(sessions: Sessions, action: str) -> list[AuditEntry]:
    async with sessions() as session:
        rows = await session.scalars(
            select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id)
        )
        return list(rows)


async def issued_count(sessions: Sessions) -> int:
    async with sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(IssuedUserKey)) or 0)


async def account_key(sessions: Sessions, name: str) -> str:
    async with sessions() as session:
        key = await session.scalar(select(Account.public_key).where(Account.name == name))
        assert key is not None
        return key


# -- set-up ----------------------------------------------------------------------------------


async def test_setup_makes_an_auth_account_nats_server_accepts(
    sessions: Sessions, sealer: Sealer, settings: Settings, keys: CalloutKeys
) -> None:
    auth = decode((await _account_jwt(sessions, "AUTH")), expected_type="account")
    assert auth.subject == keys.account_public_key
    assert auth.nats["authorization"] == {
        "auth_users": [keys.user_public_key],
        "allowed_accounts": ["*"],
        "xkey": keys.xkey_public_key,
    }
    assert keys.signing_key in auth.nats["signing_keys"]
    # Again: nothing new (idempotent), the same keys.
    async with sessions() as session, session.begin():
        again = await setup_auth_callout(session, sealer, settings, actor=ADMIN)
    assert not again.created and again.user_public_key == keys.user_public_key
    # Seeds are sealed at rest and hidden from repr.
    assert "seed" not in repr(keys) and repr(keys.user_seed_sealed) not in repr(keys)


async def test_the_sentinel_is_a_deny_all_bearer_user_of_the_auth_account(
    sessions: Sessions, settings: Settings, keys: CalloutKeys
) -> None:
    async with sessions() as session:
        assert await default_sentinel(session, settings) is None  # not enabled
        on = replace(settings, auth_callout=AuthCalloutSettings(enabled=True))
        token = await default_sentinel(session, on)
    assert token is not None
    sentinel = decode(token, expected_type="user")
    assert sentinel.nats["bearer_token"] is True
    assert sentinel.issuer == keys.signing_key
    assert sentinel.issuer_account == keys.account_public_key
    assert sentinel.nats["pub"] == {"deny": [">"]} and sentinel.nats["sub"] == {"deny": [">"]}
    assert sentinel.exp is None


async def test_the_service_user_is_a_user_of_the_auth_account_listed_in_auth_users(
    sealer: Sealer, keys: CalloutKeys
) -> None:
    user = decode(service_user_jwt(keys, sealer), expected_type="user")
    assert user.subject == keys.user_public_key
    assert user.issuer == keys.signing_key and user.issuer_account == keys.account_public_key
    assert user.iat > 0 and user.exp is None
    # It hears the requests and answers each once; nothing else.
    assert user.nats["sub"] == {"allow": ["$SYS.REQ.USER.AUTH"]}
    assert user.nats["pub"] == {"deny": [">"]}
    assert user.nats["resp"]["max"] == 1


async def test_an_existing_account_of_that_name_is_never_turned_into_the_auth_account(
    sessions: Sessions, sealer: Sealer, settings: Settings, operator: Any
) -> None:
    async with sessions() as session, session.begin():
        await create_account(session, sealer, settings, name="AUTH", actor=ADMIN)
    with pytest.raises(ConflictError, match="not an auth callout account"):
        async with sessions() as session, session.begin():
            await setup_auth_callout(session, sealer, settings, actor=ADMIN)
    with pytest.raises(ConfigError, match="init --auth-callout"):
        async with sessions() as session:
            await load_callout_keys(session, settings)


# -- answers ---------------------------------------------------------------------------------


async def test_an_encrypted_request_with_a_valid_token_gets_an_encrypted_user_jwt(
    service: CalloutService,
    sessions: Sessions,
    keys: CalloutKeys,
    world: World,
    idp: IdpStandIn,
) -> None:
    server = FakeServer()
    token = idp.token("00u-alice", email="alice@example.com")
    request, user_nkey = server.request_jwt(
        keys.account_public_key, connect={"auth_token": token, "jwt": "sentinel"}
    )
    data, headers = server.sealed(request, keys)
    answer = await service.answer(data, headers)
    assert answer is not None
    response, encrypted = server.read_answer(answer, keys)
    assert encrypted
    # What nats-server checks: sub = its user nkey, aud = its id, one of jwt/error.
    assert response.subject == user_nkey and response.claims["aud"] == server.id
    assert response.issuer == keys.signing_key
    assert response.nats["issuer_account"] == keys.account_public_key
    assert "error" not in response.nats
    user = decode(response.nats["jwt"], expected_type="user")
    orders = await account_key(sessions, "ORDERS")
    assert user.subject == user_nkey and user.name == "alice"
    assert user.issuer_account == orders  # placed in ORDERS, by its scoped key
    assert user.nats["tags"] == ["group:eng"]
    assert "aud" not in user.claims
    [entry] = await audit(sessions, "credentials.issue")
    assert entry.actor == "alice" and entry.source == "192.0.2.7"
    assert (entry.user_name, entry.account_key) == ("alice", orders)
    assert entry.details["via"] == "callout" and entry.details["user_key"] == user_nkey
    assert token not in str(entry.details)
    assert entry.request_id and entry.request_id.startswith("callout-")


async def test_a_plain_request_gets_a_plain_answer(
    service: CalloutService, keys: CalloutKeys, world: World, idp: IdpStandIn
) -> None:
    server = FakeServer()
    request, user_nkey = server.request_jwt(
        keys.account_public_key,
        connect={"auth_token": idp.token("00u-alice", email="alice@example.com")},
    )
    answer = await service.answer(request.encode(), None)
    assert answer is not None and answer.startswith(b"eyJ")
    response, encrypted = server.read_answer(answer, keys)
    assert not encrypted and response.subject == user_nkey
    assert decode(response.nats["jwt"], expected_type="user").subject == user_nkey


async def test_the_password_carries_the_token_and_the_user_names_the_account(
    service: CalloutService, sessions: Sessions, keys: CalloutKeys, world: World, idp: IdpStandIn
) -> None:
    server = FakeServer()
    token = idp.token("00u-olga", email="olga@example.com")
    # olga reaches ORDERS and OPS: without an account the answer says to pick one.
    request, _ = server.request_jwt(keys.account_public_key, connect={"auth_token": token})
    refused, _ = server.read_answer(
        await service.answer(*server.sealed(request, keys)) or b"", keys
    )
    assert "say which one" in refused.nats["error"]
    request, user_nkey = server.request_jwt(
        keys.account_public_key, connect={"user": "OPS", "pass": token}
    )
    allowed, _ = server.read_answer(
        await service.answer(*server.sealed(request, keys)) or b"", keys
    )
    user = decode(allowed.nats["jwt"], expected_type="user")
    assert user.subject == user_nkey
    assert user.issuer_account == await account_key(sessions, "OPS")


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("no token", "no IdP token"),
        ("expired", "expired"),
        ("forged", "not published"),
        ("unknown user", "no SCIM user"),
        ("inactive", "inactive"),
        ("no binding", "no binding"),
        ("unknown account", "no binding to account"),
    ],
)
async def test_refusals_answer_with_an_error_and_are_audited(
    service: CalloutService,
    sessions: Sessions,
    keys: CalloutKeys,
    world: World,
    idp: IdpStandIn,
    case: str,
    reason: str,
) -> None:
    tokens = {
        "no token": None,
        "expired": idp.token("00u-alice", email="alice@example.com", ttl=-600),
        # Signed by a key the IdP never published.
        "forged": idp.token("00u-alice", email="alice@example.com", key=make_key()),
        "unknown user": idp.token("00u-zed", email="zed@example.com"),
        "inactive": idp.token("00u-dave", email="dave@example.com"),
        "no binding": idp.token("00u-carol", email="carol@example.com"),
        "unknown account": idp.token("00u-alice", email="alice@example.com"),
    }
    token = tokens[case]
    connect: dict[str, Any] = {}
    if case == "unknown account":
        connect = {"user": "NOPE", "pass": token}
    elif token is not None:
        connect = {"auth_token": token}
    verified = case in ("inactive", "no binding", "unknown user", "unknown account")
    refused = {"via": "callout", "reason": "forbidden" if verified else "unauthenticated"}
    refused_before = REGISTRY.get_sample_value("nir_credentials_refused_total", refused) or 0
    server = FakeServer()
    request, user_nkey = server.request_jwt(keys.account_public_key, connect=connect)
    answer = await service.answer(*server.sealed(request, keys))
    assert answer is not None
    response, encrypted = server.read_answer(answer, keys)
    assert encrypted and response.subject == user_nkey and response.claims["aud"] == server.id
    assert "jwt" not in response.nats
    refused_after = REGISTRY.get_sample_value("nir_credentials_refused_total", refused)
    assert refused_after == refused_before + 1
    error = response.nats["error"]
    assert reason.lower() in error.lower() and error
    assert token is None or token not in error
    assert await issued_count(sessions) == 0
    [entry] = await audit(sessions, "credentials.refuse")
    assert entry.details["via"] == "callout" and entry.details["user_key"] == user_nkey
    assert entry.source == "192.0.2.7"
    assert token is None or token not in str(entry.details)
    if verified:
        assert entry.actor != "anonymous" and entry.details["idp"] == "corp"
    else:
        assert entry.actor == "anonymous"
    # The person the token names (by userName when SCIM knows them); nobody without one.
    user = {"unknown user": "zed@example.com", "inactive": "dave", "no binding": "carol"}.get(
        case, "alice" if verified else None
    )
    assert entry.user_name == user
    # The account the client asked for, if it exists (NOPE does not).
    assert entry.account_key is None


async def test_a_request_that_queued_too_long_is_refused_without_a_decision(
    service: CalloutService,
    sessions: Sessions,
    keys: CalloutKeys,
    world: World,
    idp: IdpStandIn,
    caplog: pytest.LogCaptureFixture,
) -> None:
    token = idp.token("00u-alice", email="alice@example.com")
    server = FakeServer()
    request, user_nkey = server.request_jwt(keys.account_public_key, connect={"auth_token": token})
    sealed = server.sealed(request, keys)
    late = await service.answer(*sealed, waited=SHED_AFTER_SECONDS + 0.5)
    assert late is not None
    response, _ = server.read_answer(late, keys)
    assert response.nats["error"] == OVERLOADED and "jwt" not in response.nats
    assert response.subject == user_nkey
    assert await issued_count(sessions) == 0
    # not a decision about alice: counted in the log, not audited as her refusal
    assert await audit(sessions, "credentials.refuse") == []
    assert "overloaded: refused 1 request" in caplog.text
    # the same request, on time, is decided (and allowed)
    on_time = await service.answer(*sealed, waited=SHED_AFTER_SECONDS / 2)
    assert on_time is not None and "jwt" in server.read_answer(on_time, keys)[0].nats
    assert await issued_count(sessions) == 1


async def test_a_request_still_undecided_at_the_servers_timeout_gets_nothing_issued(
    service: CalloutService,
    sessions: Sessions,
    keys: CalloutKeys,
    world: World,
    idp: IdpStandIn,
) -> None:
    server = FakeServer()
    first, first_nkey = server.request_jwt(
        keys.account_public_key,
        connect={"user": "ORDERS", "pass": idp.token("00u-olga", email="olga@example.com")},
    )
    now = int(time.time())
    # The server waits 1 s for this answer (exp - iat), half of it already spent queueing.
    late, _ = server.request_jwt(
        keys.account_public_key,
        connect={"auth_token": idp.token("00u-alice", email="alice@example.com")},
        iat=now,
        exp=now + 1,
    )
    async with sessions() as blocker, blocker.begin():
        # Another writer holds ORDERS (on SQLite: the write lock) for 1.2 s: the first
        # request's batch waits for it, and the second queues behind that batch.
        await blocker.execute(
            update(Account).where(Account.name == "ORDERS").values(name=Account.name)
        )
        first_answer = asyncio.create_task(service.answer(*server.sealed(first, keys)))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        async with asyncio.timeout(5):  # not for ever if the late request waits for ORDERS
            late_answer = await service.answer(*server.sealed(late, keys), waited=0.5)
        gave_up_after = time.monotonic() - started
        await asyncio.sleep(1.0)
    assert late_answer is not None
    response, _ = server.read_answer(late_answer, keys)
    assert response.nats["error"] == OVERLOADED and "jwt" not in response.nats
    assert 0.4 < gave_up_after < 1.0
    # The first one is decided once the writer commits; the late one is never decided.
    answered = await first_answer
    assert answered is not None and "jwt" in server.read_answer(answered, keys)[0].nats
    async with sessions() as session:
        issued = set(await session.scalars(select(IssuedUserKey.public_key)))
    assert issued == {first_nkey}
    assert await audit(sessions, "credentials.refuse") == []


async def test_a_policy_file_neither_prunes_nor_declares_the_auth_account(
    sessions: Sessions, keys: CalloutKeys, world: World
) -> None:
    keep_only = parse_policy("accounts:\n  KEEP: {}\n")
    async with sessions() as session:
        plan = await plan_policy(session, keep_only, prune_accounts=True)
    removed = {c.name for c in plan.changes if c.action == "remove" and c.kind == "account"}
    assert keys.account_name not in removed and removed  # others are pruned, AUTH is not
    declares = parse_policy(f"accounts:\n  {keys.account_name}: {{}}\n")
    async with sessions() as session:
        with pytest.raises(ConflictError, match="auth callout"):
            await plan_policy(session, declares)


async def test_requests_that_cannot_be_answered_get_no_answer(
    service: CalloutService, sessions: Sessions, keys: CalloutKeys, world: World
) -> None:
    server = FakeServer()
    responder = CalloutResponder(keys, service._app[SEALER])
    good, _ = server.request_jwt(keys.account_public_key, connect={"auth_token": "t"})
    sealed, headers = server.sealed(good, keys)

    def refused(data: bytes, hdrs: dict[str, str] | None, match: str) -> None:
        with pytest.raises(CalloutRequestError, match=match):
            responder.read(data, hdrs)

    refused(sealed, None, "without a Nats-Server-Xkey")
    refused(sealed[:-1] + bytes([sealed[-1] ^ 1]), headers, "cannot decrypt")
    refused(sealed, {XKEY_HEADER: new_keypair("curve")[0]}, "cannot decrypt")
    # Signed by another server than the one it names.
    other = FakeServer()
    forged, _ = server.request_jwt(keys.account_public_key, signer=other.seed)
    refused(forged.encode(), None, "not signed by the server it names")
    # The header names another key than the signed server_id.xkey.
    mismatched, _ = server.request_jwt(keys.account_public_key, server_xkey=other.xkey)
    refused(*server.sealed(mismatched, keys), match="differs from the signed server xkey")
    # Not a request at all: a user JWT, garbage, a wrong audience, a stale request.
    _, account_seed = new_keypair("account")
    user_jwt = encode(user_claims("u", new_keypair("user")[0]), account_seed)
    refused(user_jwt.encode(), None, "not an authorization request")
    refused(b"hello", None, "not an authorization request")
    wrong_aud, _ = server.request_jwt(keys.account_public_key, audience="somewhere")
    refused(wrong_aud.encode(), None, "audience")
    stale, _ = server.request_jwt(
        keys.account_public_key, exp=int(time.time()) - CLOCK_SKEW_SECONDS - 60
    )
    refused(stale.encode(), None, "expired")
    bad_nkey, _ = server.request_jwt(keys.account_public_key, user_nkey=new_keypair("account")[0])
    refused(bad_nkey.encode(), None, "user_nkey")
    # The service drops such requests without answering or auditing anything.
    assert await service.answer(b"hello", None) is None
    assert await audit(sessions, "credentials.refuse") == []


async def _account_jwt(sessions: Sessions, name: str) -> str:
    async with sessions() as session:
        token = await session.scalar(select(Account.jwt).where(Account.name == name))
        assert token is not None
        return token


def test_the_account_spec_takes_an_authorization_section_and_checks_it() -> None:
    from resolver.accounts.specs import validate_spec
    from resolver.errors import ValidationError

    user, xkey = new_keypair("user")[0], new_keypair("curve")[0]
    good = {"auth_users": [user], "allowed_accounts": ["*"], "xkey": xkey}
    assert validate_spec({"authorization": good}) == {"authorization": good}
    for bad in (
        "yes",
        {"auth_users": [xkey]},
        {"auth_users": [user], "xkey": user},
        {"auth_users": [user], "allowed_accounts": ["ORDERS"]},
        {"auth_users": [user], "unknown": 1},
        {"allowed_accounts": ["*"]},  # accounts without users
        {"auth_users": [user], "allowed_accounts": ["*", new_keypair("account")[0]]},
    ):
        with pytest.raises(ValidationError):
            validate_spec({"authorization": bad})
