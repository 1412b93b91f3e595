"""Fixtures for the accounts and admin tests: an initialised operator on a real database."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from resolver.accounts.operator import create_operator
from resolver.app import create_app
from resolver.audit.service import Actor
from resolver.auth.tokens import create_token
from resolver.config import Settings
from resolver.db.engine import create_sessionmaker
from resolver.db.models import Operator
from resolver.sealing import Sealer, load_master_key

ADMIN = Actor("test-admin")


@pytest.fixture
def sealer(settings: Settings) -> Sealer:
    return Sealer(load_master_key(settings.master_key_path))


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return create_sessionmaker(engine)


@pytest.fixture
async def operator(
    sessions: async_sessionmaker[AsyncSession], sealer: Sealer, settings: Settings
) -> Operator:
    """The operator, its signing key and the system account, as ``init`` makes them."""
    async with sessions() as session, session.begin():
        return await create_operator(
            session,
            sealer,
            name="test-operator",
            account_server_url=f"{settings.public_url}/jwt/v1",
            account_jwt_ttl=settings.accounts.jwt_ttl_seconds,
        )


@pytest.fixture
async def tokens(sessions: async_sessionmaker[AsyncSession], operator: Operator) -> dict[str, str]:
    """Bearer tokens by scope: ``admin``, ``admin:read`` and ``scim`` (no account rights)."""
    async with sessions() as session, session.begin():
        return {
            scope: await create_token(session, f"t-{scope.replace(':', '-')}", [scope])
            for scope in ("admin", "admin:read", "scim")
        }


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def client(
    settings: Settings, operator: Operator, aiohttp_client: Callable[..., Any]
) -> TestClient:
    return await aiohttp_client(create_app(settings))


@pytest.fixture
async def operator_signing_seed(
    sessions: async_sessionmaker[AsyncSession], sealer: Sealer, operator: Operator
) -> bytes:
    """The operator signing key's seed: what an ``nsc`` holding the operator would sign with."""
    from resolver.accounts.signing import active_signing_key

    async with sessions() as session:
        key = await active_signing_key(session, operator)
    return sealer.open(key.seed_sealed)


def nsc_account_jwt(
    signer_seed: bytes, account_key: str, *, iat: int, name: str = "external", **claims: Any
) -> str:
    """An account JWT as ``nsc push`` would send it, signed by ``signer_seed``."""
    from resolver.natsjwt import account_claims, encode

    return encode(account_claims(name, account_key, **claims), signer_seed, iat=iat)


async def outbox_rows(sessions: async_sessionmaker[AsyncSession], account_key: str) -> list[Any]:
    from sqlalchemy import select

    from resolver.db.models import PushOutbox

    async with sessions() as session:
        rows = await session.scalars(
            select(PushOutbox).where(PushOutbox.account_key == account_key).order_by(PushOutbox.id)
        )
        return list(rows)
