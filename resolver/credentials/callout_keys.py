"""The auth account and the auth callout's keys: made by ``init --auth-callout``, read at start.

The auth account is an ordinary account of ours whose spec carries the ``authorization``
section: ``auth_users`` = the callout service's user, ``allowed_accounts`` = ``"*"``, ``xkey``
= the curve key nats-server encrypts requests to. Its three secrets (that user's seed, the
xkey seed, the sentinel's seed) are sealed in ``auth_callout_keys``, so any replica with the
database and the master key can answer callouts; no creds file has to be copied around.

The service's user JWT is minted at every connect from the sealed seed (no file, no
expiry: the seed proves the identity at each connect, and the account's revocations can still
cut it). The sentinel is the bearer user (deny everything) that clients without a JWT of their
own are given by nats-server's ``default_sentinel``; the callout then decides who they are.
Nothing here commits.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from resolver.accounts.service import create_account, get_account
from resolver.accounts.signing import plain_signing_key
from resolver.audit.service import Actor, record
from resolver.config import Settings
from resolver.db.models import Account, AuthCalloutKeys
from resolver.errors import ConfigError, ConflictError, NotFoundError
from resolver.natsjwt import encode, format_creds, new_keypair, user_claims
from resolver.sealing import Sealer

#: Every account may be a target: the service already holds every account's keys, so
#: listing them one by one would add no protection, only a re-sign of the auth account
#: per new account. nats-io/jwt accepts "*" only alone (account_claims.go).
ANY_ACCOUNT = "*"
SENTINEL_NAME = "auth-callout-sentinel"
SERVICE_USER_NAME = "nats-iam-resolver auth callout"
_DENY_ALL = {"pub": {"deny": [">"]}, "sub": {"deny": [">"]}}
# The service user hears the requests and may answer each once (reply permission), nothing
# else: its seed, if stolen, can neither listen elsewhere nor publish to anyone.
_SERVICE_PERMISSIONS = {
    "pub": {"deny": [">"]},
    "sub": {"allow": ["$SYS.REQ.USER.AUTH"]},
    "resp": {"max": 1},
}


@dataclass(frozen=True)
class CalloutKeys:
    """What the responder needs to answer: public keys, and seeds still sealed."""

    account_name: str
    account_public_key: str
    #: The auth account's plain signing key: signs the responses and the service's user.
    signing_key: str
    signing_seed_sealed: bytes = field(repr=False)
    user_public_key: str
    user_seed_sealed: bytes = field(repr=False)
    xkey_public_key: str
    xkey_seed_sealed: bytes = field(repr=False)


@dataclass(frozen=True)
class CalloutSetup:
    """What ``init --auth-callout`` made or found (public values only)."""

    account_name: str
    account_public_key: str
    user_public_key: str
    xkey_public_key: str
    sentinel_jwt: str
    created: bool


async def _row_of(session: AsyncSession, account: Account) -> AuthCalloutKeys | None:
    return await session.scalar(
        select(AuthCalloutKeys).where(AuthCalloutKeys.account_id == account.id)
    )


async def setup_auth_callout(
    session: AsyncSession, sealer: Sealer, settings: Settings, *, actor: Actor
) -> CalloutSetup:
    """Create the auth account named ``[auth_callout] account`` and its keys; idempotent.

    An existing account of that name that is not our auth account is refused: giving it an
    ``authorization`` section would send every one of its users through the callout.
    """
    name = settings.auth_callout.account
    try:
        account: Account | None = await get_account(session, name)
    except NotFoundError:
        account = None
    if account is not None:
        row = await _row_of(session, account)
        if row is None:
            raise ConflictError(
                f"account {name!r} exists and is not an auth callout account; "
                "choose another name with [auth_callout] account"
            )
        return CalloutSetup(
            account_name=account.name,
            account_public_key=account.public_key,
            user_public_key=row.user_public_key,
            xkey_public_key=row.xkey_public_key,
            sentinel_jwt=row.sentinel_jwt,
            created=False,
        )

    user_public, user_seed = new_keypair("user")
    xkey_public, xkey_seed = new_keypair("curve")
    spec = {
        "description": "Auth callout: nats-iam-resolver decides who connects (IdP tokens)",
        "authorization": {
            "auth_users": [user_public],
            "allowed_accounts": [ANY_ACCOUNT],
            "xkey": xkey_public,
        },
    }
    account = await create_account(session, sealer, settings, name=name, spec=spec, actor=actor)
    signer = await plain_signing_key(session, account)
    sentinel_public, sentinel_seed = new_keypair("user")
    sentinel = encode(
        user_claims(
            SENTINEL_NAME,
            sentinel_public,
            issuer_account=account.public_key,
            permissions=_DENY_ALL,
            bearer_token=True,
        ),
        sealer.open(signer.seed_sealed),
    )
    session.add(
        AuthCalloutKeys(
            account_id=account.id,
            user_public_key=user_public,
            user_seed_sealed=sealer.seal(user_seed),
            xkey_public_key=xkey_public,
            xkey_seed_sealed=sealer.seal(xkey_seed),
            sentinel_public_key=sentinel_public,
            sentinel_seed_sealed=sealer.seal(sentinel_seed),
            sentinel_jwt=sentinel,
        )
    )
    await session.flush()
    record(
        session,
        actor,
        "auth_callout.setup",
        target=account.public_key,
        details={
            "account": name,
            "auth_user": user_public,
            "xkey": xkey_public,
            "sentinel": sentinel_public,
        },
        account=account.public_key,
    )
    return CalloutSetup(
        account_name=name,
        account_public_key=account.public_key,
        user_public_key=user_public,
        xkey_public_key=xkey_public,
        sentinel_jwt=sentinel,
        created=True,
    )


async def _account_and_row(
    session: AsyncSession, settings: Settings
) -> tuple[Account, AuthCalloutKeys] | None:
    try:
        account = await get_account(session, settings.auth_callout.account)
    except NotFoundError:
        return None
    row = await _row_of(session, account)
    return None if row is None else (account, row)


async def default_sentinel(session: AsyncSession, settings: Settings) -> str | None:
    """The sentinel JWT for nats-server's ``default_sentinel``; None unless the callout is on
    and set up."""
    if not settings.auth_callout.enabled:
        return None
    found = await _account_and_row(session, settings)
    return None if found is None else found[1].sentinel_jwt


async def sentinel_creds(session: AsyncSession, sealer: Sealer, settings: Settings) -> str | None:
    """A creds file of the sentinel, for clients of servers without ``default_sentinel``
    (nats-server before 2.11.2). Bearer: its seed proves nothing, but clients need one."""
    found = await _account_and_row(session, settings)
    if found is None:
        return None
    row = found[1]
    return format_creds(row.sentinel_jwt, sealer.open(row.sentinel_seed_sealed))


async def load_callout_keys(session: AsyncSession, settings: Settings) -> CalloutKeys:
    """The keys of the configured auth account; ``ConfigError`` when it was never set up."""
    found = await _account_and_row(session, settings)
    if found is None:
        raise ConfigError(
            "auth_callout.account",
            f"no auth callout account {settings.auth_callout.account!r}: "
            "run `nats-iam-resolver init --auth-callout`",
        )
    account, row = found
    signer = await plain_signing_key(session, account)
    return CalloutKeys(
        account_name=account.name,
        account_public_key=account.public_key,
        signing_key=signer.public_key,
        signing_seed_sealed=signer.seed_sealed,
        user_public_key=row.user_public_key,
        user_seed_sealed=row.user_seed_sealed,
        xkey_public_key=row.xkey_public_key,
        xkey_seed_sealed=row.xkey_seed_sealed,
    )


def service_user_jwt(keys: CalloutKeys, sealer: Sealer, *, now: int | None = None) -> str:
    """A user JWT for the callout service's own connection (made at each connect)."""
    claims = user_claims(
        SERVICE_USER_NAME,
        keys.user_public_key,
        issuer_account=keys.account_public_key,
        permissions=_SERVICE_PERMISSIONS,
    )
    return encode(
        claims, sealer.open(keys.signing_seed_sealed), iat=int(time.time()) if now is None else now
    )
