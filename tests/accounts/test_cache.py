"""The served-JWT cache: its rules, invalidation on commit, and across replicas on PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from resolver.accounts import service
from resolver.accounts.cache import AccountJWTCache, CachedJWT
from resolver.accounts.operator import create_operator
from resolver.app import create_app
from resolver.appkeys import JWT_CACHE, SESSIONMAKER
from resolver.auth.tokens import create_token
from resolver.config import DatabaseSettings, NatsSettings, Settings
from resolver.db import migrate
from resolver.db.engine import create_engine, create_sessionmaker
from resolver.db.models import Account, Operator
from resolver.natsjwt import new_keypair
from resolver.sealing import Sealer, generate_master_key_file, load_master_key
from tests.accounts.conftest import ADMIN, bearer

Sessions = async_sessionmaker[AsyncSession]


def entry(key: str, jti: str = "J1") -> CachedJWT:
    return CachedJWT(account_key=key, jwt="x.y.z", jti=jti, expires_at=None)


def test_cache_rules() -> None:
    clock = [100.0]
    cache = AccountJWTCache(max_age=5, clock=lambda: clock[0])
    generation = cache.generation
    cache.put(entry("A1"), generation=generation)
    assert cache.get("A1") == entry("A1")
    clock[0] += 5.5  # entries age out even without a notification
    assert cache.get("A1") is None

    # A read that began before an invalidation must not store what it read.
    stale_read = cache.generation
    cache.invalidate(["A1"])
    cache.put(entry("A1", "OLD"), generation=stale_read)
    assert cache.get("A1") is None
    cache.put(entry("A1", "NEW"), generation=cache.generation)
    assert cache.get("A1").jti == "NEW"
    cache.clear()
    assert len(cache) == 0

    bounded = AccountJWTCache(max_entries=2)
    for key in ("A1", "A2", "A3"):
        bounded.put(entry(key), generation=bounded.generation)
    assert len(bounded) <= 2 and bounded.get("A3") is not None


async def test_concurrent_misses_share_one_load() -> None:
    cache = AccountJWTCache()
    calls = 0
    release = asyncio.Event()

    async def load() -> CachedJWT:
        nonlocal calls
        calls += 1
        await release.wait()
        return entry("A1", f"J{calls}")

    waiters = [asyncio.create_task(cache.get_or_load("A1", load)) for _ in range(20)]
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*waiters)
    assert calls == 1
    assert {r.jti for r in results} == {"J1"}
    assert cache.get("A1").jti == "J1"


async def test_a_request_after_an_invalidation_does_not_join_an_older_load() -> None:
    cache = AccountJWTCache()
    started = asyncio.Event()
    release = asyncio.Event()
    versions = iter(["OLD", "NEW"])

    async def load() -> CachedJWT:
        jti = next(versions)
        if jti == "OLD":
            started.set()
            await release.wait()
        return entry("A1", jti)

    early = asyncio.create_task(cache.get_or_load("A1", load))
    await started.wait()
    cache.invalidate(["A1"])  # a commit changed A1 while the first load was reading
    late = await cache.get_or_load("A1", load)
    release.set()
    assert late.jti == "NEW"
    assert (await early).jti == "OLD"  # it began before the change; it is not cached
    assert cache.get("A1").jti == "NEW"


async def test_a_failed_load_is_not_shared_with_waiters() -> None:
    cache = AccountJWTCache()
    attempts = 0
    release = asyncio.Event()

    async def load() -> CachedJWT:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            await release.wait()
            raise OSError("database went away")
        return entry("A1")

    leader = asyncio.create_task(cache.get_or_load("A1", load))
    await asyncio.sleep(0)
    follower = asyncio.create_task(cache.get_or_load("A1", load))
    await asyncio.sleep(0)
    release.set()
    with pytest.raises(OSError):
        await leader
    assert (await follower).jti == "J1"
    assert attempts == 2


async def served_jti(client: TestClient, key: str) -> str:
    resp = await client.get(f"/jwt/v1/accounts/{key}")
    assert resp.status == 200
    return resp.headers["ETag"].strip('"')


async def _quiet(cache: AccountJWTCache, window: float = 0.3, limit: float = 5.0) -> None:
    """Wait until no invalidation has arrived for ``window`` seconds (late NOTIFYs landed)."""
    waited = 0.0
    seen = cache.generation
    while waited < limit:
        await asyncio.sleep(window)
        waited += window
        if cache.generation == seen:
            return
        seen = cache.generation


async def test_every_commit_that_changes_a_jwt_invalidates(
    settings: Settings,
    operator: Operator,
    sessions: Sessions,
    sealer: Sealer,
    tokens: dict[str, str],
    aiohttp_client: Callable[..., Any],
) -> None:
    cache = AccountJWTCache(max_age=3_600)  # only invalidation can refresh it in this test
    client = await aiohttp_client(create_app(settings, overrides={JWT_CACHE: cache}))
    generation = cache.generation
    async with sessions() as session, session.begin():
        account = await service.create_account(session, sealer, settings, name="C", actor=ADMIN)
    key = account.public_key
    if not settings.database_url.startswith("sqlite"):
        # The create's NOTIFY reaches the app's listener asynchronously: let it land first,
        # or it may empty the cache right after the GET below filled it.
        for _ in range(100):
            if cache.generation != generation:
                break
            await asyncio.sleep(0.05)
        assert cache.generation != generation, "the listener never saw the create"
    assert await served_jti(client, key) == account.jti
    assert cache.get(key) is not None

    # A writer that does not share the app's sessions (another process, say) is not seen
    # until the entry ages out: proof that GETs are served from memory.
    async with sessions() as session, session.begin():
        row = await session.get_one(Account, account.id)
        await service.resign_account(session, sealer, settings, row, force=True)
    if settings.database_url.startswith("sqlite"):
        assert await served_jti(client, key) == account.jti
    cache.clear()
    current = await served_jti(client, key)
    assert current != account.jti

    # Through the app: an admin revocation is served at once.
    resp = await client.post(
        f"/admin/v1/accounts/{key}/revocations",
        json={"user_key": new_keypair("user")[0]},
        headers=bearer(tokens["admin"]),
    )
    assert resp.status == 200
    after_revoke = await served_jti(client, key)
    assert after_revoke not in (account.jti, current)
    assert after_revoke == (await resp.json())["jti"]

    # Any code using the app's sessions (jobs, SCIM) invalidates too; a rollback does not.
    # On PostgreSQL the revocation's own NOTIFY comes back to this app a little later and
    # empties the cache once more: wait for that, then fill the cache again.
    await _quiet(cache)
    assert await served_jti(client, key) == after_revoke
    assert cache.get(key) is not None
    app_sessions = client.app[SESSIONMAKER]
    with pytest.raises(RuntimeError):
        async with app_sessions() as session, session.begin():
            row = await session.get_one(Account, account.id)
            await service.resign_account(session, sealer, settings, row, force=True)
            raise RuntimeError("abort")
    assert cache.get(key) is not None
    async with app_sessions() as session, session.begin():
        row = await session.get_one(Account, account.id)
        await service.resign_account(session, sealer, settings, row, force=True)
    assert cache.get(key) is None
    assert await served_jti(client, key) == row.jti


@pytest.fixture
async def pg_settings(tmp_path: Path, postgres_url: str) -> Settings:
    data_dir = tmp_path / "pg"
    data_dir.mkdir()
    generate_master_key_file(data_dir / "master.key")
    settings = replace(
        Settings(data_dir=data_dir),
        database=DatabaseSettings(url=postgres_url),
        nats=NatsSettings(enabled=False),
    )
    engine = create_engine(postgres_url)
    try:
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()
    return settings


@pytest.mark.postgres
async def test_two_replicas_on_postgresql_invalidate_each_other(
    pg_settings: Settings, aiohttp_client: Callable[..., Any]
) -> None:
    sealer = Sealer(load_master_key(pg_settings.master_key_path))
    engine = create_engine(pg_settings.database_url)
    sessions = create_sessionmaker(engine)
    try:
        async with sessions() as session, session.begin():
            await create_operator(
                session,
                sealer,
                name="op",
                account_server_url="http://x/jwt/v1",
                account_jwt_ttl=86_400,
            )
            account = await service.create_account(
                session, sealer, pg_settings, name="SHARED", actor=ADMIN
            )
            admin_token = await create_token(session, "admin", ["admin"])
        key = account.public_key

        caches = [AccountJWTCache(max_age=3_600), AccountJWTCache(max_age=3_600)]
        first, second = [
            await aiohttp_client(create_app(pg_settings, overrides={JWT_CACHE: cache}))
            for cache in caches
        ]
        assert await served_jti(first, key) == account.jti
        assert await served_jti(second, key) == account.jti
        assert caches[1].get(key) is not None

        resp = await first.post(
            f"/admin/v1/accounts/{key}/revocations",
            json={"user_key": new_keypair("user")[0]},
            headers=bearer(admin_token),
        )
        assert resp.status == 200
        new_jti = (await resp.json())["jti"]
        assert await served_jti(first, key) == new_jti
        assert await wait_for_jti(second, key, new_jti, within=1.0)

        # A writer outside both apps (the CLI) reaches both through NOTIFY as well.
        async with sessions() as session, session.begin():
            row = await session.get_one(Account, account.id)
            await service.resign_account(session, sealer, pg_settings, row, force=True)
        for client in (first, second):
            assert await wait_for_jti(client, key, row.jti, within=1.0)
    finally:
        await engine.dispose()


async def wait_for_jti(client: TestClient, key: str, jti: str, *, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await served_jti(client, key) == jti:
            return True
        await asyncio.sleep(0.02)
    return False
