"""Fixtures for the push tests: an initialised operator, system user creds, real nats-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from resolver.accounts.operator import issue_system_user_creds
from resolver.bootstrap import write_private
from resolver.config import NatsSettings, Settings
from resolver.db.models import Account, Operator, PushOutbox
from resolver.sealing import Sealer
from tests.accounts import conftest as accounts_fixtures
from tests.support.nats import NatsServer, full_resolver_config

T = TypeVar("T")

# The accounts tests' fixtures: an operator made as `init` makes it, tokens, sessions.
operator = accounts_fixtures.operator
sealer = accounts_fixtures.sealer
sessions = accounts_fixtures.sessions
tokens = accounts_fixtures.tokens


async def wait_for(
    probe: Callable[[], Awaitable[T | None]], *, within: float = 15.0, what: str = "condition"
) -> T:
    """Poll ``probe`` until it returns something truthy."""
    deadline = time.monotonic() + within
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def push_settings(settings: Settings, url: str, creds: Path, *, timeout: float = 0.3) -> Settings:
    return replace(
        settings,
        nats=NatsSettings(servers=(url,), system_creds=creds, push_timeout=timeout, enabled=True),
    )


async def outbox(sessions: async_sessionmaker[AsyncSession], account_key: str) -> list[PushOutbox]:
    async with sessions() as session:
        rows = await session.scalars(
            select(PushOutbox).where(PushOutbox.account_key == account_key).order_by(PushOutbox.id)
        )
        return list(rows)


@pytest.fixture
async def system_account(
    sessions: async_sessionmaker[AsyncSession],
    operator: Operator,
) -> Account:
    async with sessions() as session:
        return await session.scalar(select(Account).where(Account.is_system.is_(True)))


@pytest.fixture
async def sys_creds(
    sessions: async_sessionmaker[AsyncSession],
    sealer: Sealer,
    settings: Settings,
    operator: Operator,
) -> Path:
    """Creds of a system-account user, as ``init`` writes them."""
    async with sessions() as session, session.begin():
        text = await issue_system_user_creds(session, sealer)
    path = settings.data_dir / "sys.creds"
    write_private(path, text)
    return path


@pytest.fixture
def full_nats(
    tmp_path: Path,
    operator: Operator,
    system_account: Account,
) -> Iterator[NatsServer]:
    """A nats-server on the full nats resolver, the system account preloaded, not started."""
    server = NatsServer(tmp_path / "nats", "n1")
    server.configure(
        full_resolver_config(
            operator_jwt=operator.jwt or "",
            system_account_key=system_account.public_key,
            system_account_jwt=system_account.jwt or "",
            jwt_dir=tmp_path / "nats" / "jwt",
            port=server.port,
            name="n1",
        )
    )
    try:
        yield server
    finally:
        server.stop()
