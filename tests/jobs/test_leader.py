"""The job leader election on a real PostgreSQL: one winner, and a handover when it goes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest

from resolver.accounts.listener import asyncpg_dsn
from resolver.db.engine import create_engine, create_sessionmaker
from resolver.jobs.leader import (
    APPLICATION_PREFIX,
    AdvisoryLockLeader,
    lock_holder,
    replica_name,
)
from tests.support.ports import free_port

pytestmark = pytest.mark.postgres

EVERY = 1.0


async def until(check: Callable[[], bool], *, within: float, what: str) -> float:
    """Seconds until ``check()`` holds; fails after ``within``."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > within:
            raise AssertionError(f"not within {within} s: {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


@pytest.fixture
async def pair(postgres_url: str) -> AsyncIterator[tuple[AdvisoryLockLeader, AdvisoryLockLeader]]:
    dsn = asyncpg_dsn(postgres_url)
    a = AdvisoryLockLeader(dsn, check_seconds=EVERY, replica="replica-a")
    b = AdvisoryLockLeader(dsn, check_seconds=EVERY, replica="replica-b")
    a.start()
    await asyncio.wait_for(a.decided.wait(), 5)
    b.start()
    await asyncio.wait_for(b.decided.wait(), 5)
    try:
        yield a, b
    finally:
        await a.stop()
        await b.stop()


async def terminate_backend_of(postgres_url: str, replica: str) -> int:
    """End the replica's database session from outside, as a dead peer or a failover does."""
    conn = await asyncpg.connect(asyncpg_dsn(postgres_url))
    try:
        return int(
            await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = $1",
                APPLICATION_PREFIX + replica,
            )
        )
    finally:
        await conn.close()


async def holder(postgres_url: str) -> str | None:
    engine = create_engine(postgres_url)
    try:
        async with create_sessionmaker(engine)() as session:
            return await lock_holder(session)
    finally:
        await engine.dispose()


async def test_exactly_one_of_two_wins_and_the_lock_names_it(
    pair: tuple[AdvisoryLockLeader, AdvisoryLockLeader], postgres_url: str
) -> None:
    a, b = pair
    assert a.is_leader and not b.is_leader  # a tried first
    # Checks come and go; the answer does not change while both live.
    await asyncio.sleep(EVERY * 2.5)
    assert a.is_leader and not b.is_leader
    assert await holder(postgres_url) == "replica-a"


async def test_a_lost_connection_is_noticed_at_once_and_the_other_takes_over(
    pair: tuple[AdvisoryLockLeader, AdvisoryLockLeader], postgres_url: str
) -> None:
    a, b = pair
    assert a.is_leader
    assert await terminate_backend_of(postgres_url, "replica-a") == 1
    # The connection's end, not the next check, tells it (checks are a second apart).
    assert await until(lambda: not a.is_leader, within=0.5, what="a steps down") < 0.5
    # b asks within one interval; a waits two before it tries again, so b wins.
    await until(lambda: b.is_leader, within=EVERY + 1.0, what="b takes over")
    assert not a.is_leader
    assert await holder(postgres_url) == "replica-b"
    # a is back as a follower: never two leaders.
    await asyncio.sleep(EVERY * 2.5)
    assert b.is_leader and not a.is_leader


async def test_a_stopped_leader_hands_over_within_one_interval(
    pair: tuple[AdvisoryLockLeader, AdvisoryLockLeader], postgres_url: str
) -> None:
    a, b = pair
    await a.stop()
    assert not a.is_leader
    await until(lambda: b.is_leader, within=EVERY + 1.0, what="b takes over")
    assert await holder(postgres_url) == "replica-b"
    await b.stop()
    assert await holder(postgres_url) is None


async def test_without_a_database_nobody_leads_and_it_keeps_trying(postgres_url: str) -> None:
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/none"
    leader = AdvisoryLockLeader(nowhere, check_seconds=EVERY)
    leader.start()
    try:
        await asyncio.wait_for(leader.decided.wait(), 5)
        assert not leader.is_leader
        assert leader.replica == replica_name()
    finally:
        await leader.stop()
