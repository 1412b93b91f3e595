"""The operator: its identity key, signing keys and JWT, and the system account it names."""

from __future__ import annotations

import base64
import json
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from resolver.accounts.signing import (
    add_plain_signing_key,
    new_account,
    plain_signing_key,
    sign_account,
)
from resolver.db.models import Account, IssuedUserKey, Operator, OperatorSigningKey, utcnow
from resolver.errors import NotFoundError
from resolver.natsjwt import (
    decode,
    encode,
    format_creds,
    new_keypair,
    operator_claims,
    user_claims,
)
from resolver.sealing import Sealer

SYSTEM_ACCOUNT_NAME = "SYS"
SYSTEM_USER_NAME = "sys"


async def get_operator(session: AsyncSession) -> Operator:
    """The single operator this service runs (``init`` creates it)."""
    operator = await session.scalar(select(Operator).order_by(Operator.id).limit(1))
    if operator is None:
        raise NotFoundError("no operator yet: run `nats-iam-resolver init`")
    return operator


async def operator_signing_keys(session: AsyncSession, operator: Operator) -> list[str]:
    """The signing keys the operator JWT lists: the active one, the pre-published next one,
    and a retired one only while a stored account JWT is still signed by it (a rotation
    re-signing accounts, or an account uploaded with ``nsc push``), so no account the
    served operator JWT vouches for is ever left with an unknown issuer."""
    rows = list(
        await session.scalars(
            select(OperatorSigningKey)
            .where(OperatorSigningKey.operator_id == operator.id)
            .order_by(OperatorSigningKey.id)
        )
    )
    retired = {row.public_key for row in rows if row.retired_at is not None}
    in_use = await account_issuers(session, operator) if retired else set()
    return [
        row.public_key for row in rows if row.public_key not in retired or row.public_key in in_use
    ]


async def account_issuers(session: AsyncSession, operator: Operator) -> set[str]:
    """The issuers (``iss``) of the operator's live, stored account JWTs."""
    tokens = await session.scalars(
        select(Account.jwt).where(
            Account.operator_id == operator.id,
            Account.deleted_at.is_(None),
            Account.jwt.is_not(None),
        )
    )
    return {issuer for token in tokens if (issuer := jwt_issuer(token or "")) is not None}


def jwt_issuer(token: str) -> str | None:
    """A stored JWT's ``iss``, read without checking the signature (it was checked when
    stored); None when it does not parse."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return None
    issuer = claims.get("iss") if isinstance(claims, dict) else None
    return issuer if isinstance(issuer, str) else None


async def resign_operator(
    session: AsyncSession, sealer: Sealer, operator: Operator, *, account_server_url: str
) -> str:
    """Rebuild and sign the operator JWT (self-signed by the identity key, as nsc does)."""
    claims = operator_claims(
        operator.name,
        operator.public_key,
        signing_keys=await operator_signing_keys(session, operator),
        system_account=operator.system_account_key,
        account_server_url=account_server_url,
        # Account JWTs must then be signed by a signing key, so the identity key can stay
        # offline in spirit: we still hold it, but only ever use it for the operator JWT.
        strict_signing_key_usage=True,
    )
    operator.jwt = encode(claims, sealer.open(operator.seed_sealed))
    return operator.jwt


async def create_operator(
    session: AsyncSession,
    sealer: Sealer,
    *,
    name: str,
    account_server_url: str,
    account_jwt_ttl: int,
) -> Operator:
    """A new operator with an active and a pre-published next signing key (so the first
    rotation needs no new operator JWT on the servers) and a system account, all signed."""
    op_public, op_seed = new_keypair("operator")
    operator = Operator(name=name, public_key=op_public, seed_sealed=sealer.seal(op_seed))
    session.add(operator)
    await session.flush()
    session.add(new_operator_signing_key(sealer, operator, activated_at=utcnow()))
    session.add(new_operator_signing_key(sealer, operator, activated_at=None))
    system = new_account(sealer, operator.id, SYSTEM_ACCOUNT_NAME, spec={}, is_system=True)
    session.add(system)
    operator.system_account_key = system.public_key
    await session.flush()
    await add_plain_signing_key(session, sealer, system)
    await resign_operator(session, sealer, operator, account_server_url=account_server_url)
    await sign_account(session, sealer, system, ttl_seconds=account_jwt_ttl)
    return operator


def new_operator_signing_key(
    sealer: Sealer, operator: Operator, *, activated_at: datetime | None
) -> OperatorSigningKey:
    """A fresh operator signing key (not added): active from ``activated_at``, or the
    pre-published next key when None."""
    public, seed = new_keypair("operator")
    return OperatorSigningKey(
        operator_id=operator.id,
        public_key=public,
        seed_sealed=sealer.seal(seed),
        activated_at=activated_at,
    )


async def system_account(session: AsyncSession, operator: Operator) -> Account:
    account = await session.scalar(
        select(Account).where(Account.public_key == operator.system_account_key)
    )
    if account is None:
        raise NotFoundError("the operator has no system account")
    return account


async def issue_system_user_creds(session: AsyncSession, sealer: Sealer) -> str:
    """Creds for a new user of the system account (the pusher's identity); recorded."""
    operator = await get_operator(session)
    account = await system_account(session, operator)
    signer = await plain_signing_key(session, account)
    user_public, user_seed = new_keypair("user")
    claims = user_claims(SYSTEM_USER_NAME, user_public, issuer_account=account.public_key)
    token = encode(claims, sealer.open(signer.seed_sealed))
    decoded = decode(token)
    session.add(
        IssuedUserKey(
            public_key=user_public,
            account_id=account.id,
            user_id=None,
            name=SYSTEM_USER_NAME,
            signing_key=signer.public_key,
            jti=decoded.jti,
            issued_at=decoded.iat,
            expires_at=None,
        )
    )
    return format_creds(token, user_seed)
