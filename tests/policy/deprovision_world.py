"""A small world for the deprovisioning tests: operator, account, roles, bindings, issued keys.

Person credentials are minted here the way the service does it (a user JWT signed by the
account's scoped key for the user's role set, recorded as an ``IssuedUserKey``), so these
tests do not depend on the credentials endpoint.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from resolver.accounts.operator import create_operator
from resolver.accounts.service import create_account, resign_account
from resolver.audit.service import Actor
from resolver.config import Settings
from resolver.db.models import (
    Account,
    AuditEntry,
    Binding,
    IssuedUserKey,
    PushOutbox,
    Revocation,
    Role,
)
from resolver.natsjwt import decode, encode, format_creds, new_keypair, user_claims
from resolver.policy.scoped_keys import scoped_key_for
from resolver.sealing import Sealer

ADMIN = Actor("test-admin")
READER = {"subscribe": ["orders.>"]}
WRITER = {"publish": ["orders.>"], "subscribe": ["_INBOX.>"]}


@dataclass
class Issued:
    public_key: str
    jwt: str
    creds: str
    iat: int


async def setup_operator_account(
    sessions: async_sessionmaker[AsyncSession],
    sealer: Sealer,
    settings: Settings,
    *,
    name: str = "ORDERS",
) -> int:
    """Operator + system account + roles reader and writer + one managed account; its id."""
    async with sessions() as session, session.begin():
        await create_operator(
            session,
            sealer,
            name="op",
            account_server_url=f"{settings.public_url}/jwt/v1",
            account_jwt_ttl=settings.accounts.jwt_ttl_seconds,
        )
        session.add_all([Role(name="reader", spec=READER), Role(name="writer", spec=WRITER)])
    return await add_account(sessions, sealer, settings, name=name)


async def add_account(
    sessions: async_sessionmaker[AsyncSession], sealer: Sealer, settings: Settings, *, name: str
) -> int:
    async with sessions() as session, session.begin():
        account = await create_account(session, sealer, settings, name=name, actor=ADMIN)
        return account.id


async def bind(
    session: AsyncSession,
    account_id: int,
    role: str,
    *,
    group_id: str | None = None,
    group_name: str | None = None,
    ends_at: Any = None,
) -> Binding:
    role_id = await session.scalar(select(Role.id).where(Role.name == role))
    binding = Binding(
        account_id=account_id,
        role_id=role_id,
        group_id=group_id,
        group_name_key=group_name.casefold() if group_name else None,
        group_name=group_name,
        ends_at=ends_at,
    )
    session.add(binding)
    await session.flush()
    return binding


async def issue(
    session: AsyncSession,
    sealer: Sealer,
    settings: Settings,
    account_id: int,
    user_id: str,
    roles: list[str],
    *,
    ttl: int = 3_600,
    iat: int | None = None,
) -> Issued:
    """A person's creds signed by the scoped key of ``roles``, recorded for revocation."""
    account = await session.get_one(Account, account_id)
    key, created = await scoped_key_for(session, sealer, account, roles)
    if created:
        await resign_account(session, sealer, settings, account, force=True)
    when = int(time.time()) if iat is None else iat
    public, seed = new_keypair("user")
    claims = user_claims(
        f"user-{user_id[:8]}",
        public,
        issuer_account=account.public_key,
        exp=when + ttl,
        scoped=True,
    )
    token = encode(claims, sealer.open(key.seed_sealed), iat=when)
    decoded = decode(token, expected_type="user")
    session.add(
        IssuedUserKey(
            public_key=public,
            account_id=account.id,
            user_id=user_id,
            name=claims["name"],
            signing_key=key.public_key,
            jti=decoded.jti,
            issued_at=decoded.iat,
            expires_at=decoded.exp,
        )
    )
    await session.flush()
    return Issued(public, token, format_creds(token, seed), decoded.iat)


async def account_row(sessions: async_sessionmaker[AsyncSession], account_id: int) -> Account:
    async with sessions() as session:
        return await session.get_one(Account, account_id)


async def served_revocations(
    sessions: async_sessionmaker[AsyncSession], account_id: int
) -> dict[str, int]:
    """The revocations of the account JWT as stored (what is served and pushed)."""
    account = await account_row(sessions, account_id)
    claims = decode(account.jwt or "", expected_type="account").claims
    return dict(claims["nats"].get("revocations", {}))


def refused(revocations: dict[str, int], issued: Issued) -> bool:
    """What nats-server decides: revoked when revocations[key] or ["*"] >= iat."""
    return (
        revocations.get(issued.public_key, -1) >= issued.iat
        or revocations.get("*", -1) >= issued.iat
    )


async def outbox_count(sessions: async_sessionmaker[AsyncSession], account_id: int) -> int:
    account = await account_row(sessions, account_id)
    async with sessions() as session:
        return int(
            await session.scalar(
                select(func.count())
                .select_from(PushOutbox)
                .where(PushOutbox.account_key == account.public_key)
            )
            or 0
        )


async def revocation_rows(
    sessions: async_sessionmaker[AsyncSession], account_id: int
) -> dict[str, int]:
    async with sessions() as session:
        rows = await session.execute(
            select(Revocation.public_key, Revocation.revoked_at).where(
                Revocation.account_id == account_id
            )
        )
        return {key: at for key, at in rows}


async def audits(sessions: async_sessionmaker[AsyncSession], action: str) -> list[AuditEntry]:
    async with sessions() as session:
        return list(
            await session.scalars(
                select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id)
            )
        )
