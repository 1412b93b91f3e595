"""Account JWTs: build the claims from what is stored and sign with the operator signing key."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from resolver.db.models import (
    Account,
    AccountSigningKey,
    Operator,
    OperatorSigningKey,
    Revocation,
)
from resolver.errors import NotFoundError
from resolver.natsjwt import account_claims, decode, encode, new_keypair, scoped_signing_key
from resolver.sealing import Sealer


async def active_signing_key(session: AsyncSession, operator: Operator) -> OperatorSigningKey:
    """The newest activated, unretired operator signing key: what account JWTs are signed
    with (never the pre-published "next" key, which servers may not trust yet)."""
    key = await session.scalar(
        select(OperatorSigningKey)
        .where(
            OperatorSigningKey.operator_id == operator.id,
            OperatorSigningKey.activated_at.is_not(None),
            OperatorSigningKey.retired_at.is_(None),
        )
        .order_by(OperatorSigningKey.activated_at.desc(), OperatorSigningKey.id.desc())
        .limit(1)
    )
    if key is None:
        raise NotFoundError("the operator has no active signing key")
    return key


async def next_signing_key(session: AsyncSession, operator: Operator) -> OperatorSigningKey | None:
    """The pre-published operator signing key the next rotation promotes, if there is one."""
    return await session.scalar(
        select(OperatorSigningKey)
        .where(
            OperatorSigningKey.operator_id == operator.id,
            OperatorSigningKey.activated_at.is_(None),
            OperatorSigningKey.retired_at.is_(None),
        )
        .order_by(OperatorSigningKey.id.desc())
        .limit(1)
    )


def new_account(
    sealer: Sealer, operator_id: int, name: str, *, spec: dict[str, Any], is_system: bool = False
) -> Account:
    """An account row with a fresh account key, its seed sealed (not yet added or signed)."""
    public, seed = new_keypair("account")
    return Account(
        operator_id=operator_id,
        name=name,
        public_key=public,
        seed_sealed=sealer.seal(seed),
        is_system=is_system,
        spec=spec,
    )


async def add_plain_signing_key(
    session: AsyncSession, sealer: Sealer, account: Account
) -> AccountSigningKey:
    """A new plain (unscoped) account signing key.

    The operator uses ``strict_signing_key_usage``, and nats-server applies that to accounts
    too: a user JWT signed by the account identity key is refused ("User JWT issuer is not
    known"). So every user, workloads included, is signed by an account signing key.
    """
    public, seed = new_keypair("account")
    key = AccountSigningKey(account_id=account.id, public_key=public, seed_sealed=sealer.seal(seed))
    session.add(key)
    await session.flush()
    return key


async def plain_signing_key(session: AsyncSession, account: Account) -> AccountSigningKey:
    """The newest current plain signing key of ``account`` (signs workload users); never a
    rotated (superseded) one, which only stays listed for the users it signed before."""
    key = await session.scalar(
        select(AccountSigningKey)
        .where(
            AccountSigningKey.account_id == account.id,
            AccountSigningKey.role_set.is_(None),
            AccountSigningKey.superseded_at.is_(None),
            AccountSigningKey.retired_at.is_(None),
        )
        .order_by(AccountSigningKey.id.desc())
        .limit(1)
    )
    if key is None:
        raise NotFoundError(f"account {account.name!r} has no signing key")
    return key


async def account_signing_keys(session: AsyncSession, account: Account) -> list[Any]:
    """Signing keys as the account JWT lists them: plain keys and ``user_scope`` keys.

    A retired key is left out, so nats-server disconnects the users it signed; a superseded
    (rotated) key stays, with its template, so they stay connected until their JWTs expire.
    """
    rows = await session.scalars(
        select(AccountSigningKey)
        .where(
            AccountSigningKey.account_id == account.id,
            AccountSigningKey.retired_at.is_(None),
        )
        .order_by(AccountSigningKey.id)
    )
    keys: list[Any] = []
    for row in rows:
        if row.role_set is None:
            keys.append(row.public_key)
        else:
            keys.append(scoped_signing_key(row.public_key, row.role_set, row.template or {}))
    return keys


async def build_account_claims(
    session: AsyncSession, account: Account, *, ttl_seconds: int, now: int
) -> dict[str, Any]:
    revocations = {
        row.public_key: row.revoked_at
        for row in await session.scalars(
            select(Revocation)
            .where(Revocation.account_id == account.id)
            .order_by(Revocation.public_key)
        )
    }
    spec = account.spec or {}
    return account_claims(
        account.name,
        account.public_key,
        limits=spec.get("limits"),
        tags=spec.get("tags", []),
        exports=spec.get("exports", []),
        imports=spec.get("imports", []),
        description=spec.get("description"),
        authorization=spec.get("authorization"),
        revocations=revocations,
        signing_keys=await account_signing_keys(session, account),
        exp=now + ttl_seconds,
    )


def next_iat(account: Account, now: int) -> int:
    """``iat`` for a new JWT of ``account``: ``now``, but always later than the stored one.

    ``jti`` hashes only the standard fields (``exp``, ``iat``, ``iss``, ``name``, ``sub``),
    so two JWTs signed in the same second would share a jti although their revocations
    differ, and ``ETag: "<jti>"`` would then answer 304 for a changed account. A strictly
    increasing ``iat`` also makes "newer" well defined for uploads. nats-server does not
    check ``iat``, so running a second ahead under a burst of changes is harmless.
    """
    return max(now, (account.issued_at or 0) + 1)


async def sign_account(
    session: AsyncSession,
    sealer: Sealer,
    account: Account,
    *,
    ttl_seconds: int,
    now: int | None = None,
) -> str:
    """Sign ``account``'s current claims and store JWT, jti, iat and exp on the row."""
    operator = await session.get_one(Operator, account.operator_id)
    signer = await active_signing_key(session, operator)
    now = int(time.time()) if now is None else now
    claims = await build_account_claims(session, account, ttl_seconds=ttl_seconds, now=now)
    token = encode(claims, sealer.open(signer.seed_sealed), iat=next_iat(account, now))
    store_account_jwt(account, token)
    return token


def store_account_jwt(account: Account, token: str) -> None:
    """Put a verified account JWT and its jti/iat/exp on the row."""
    decoded = decode(token, expected_type="account")
    account.jwt = decoded.token
    account.jti = decoded.jti
    account.issued_at = decoded.iat
    account.expires_at = decoded.exp
