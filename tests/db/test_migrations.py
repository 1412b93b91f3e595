"""The models and the Alembic migrations describe the same schema, on both backends."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import AsyncEngine

from resolver.db import migrate
from resolver.db.models import Base


async def test_autogenerate_finds_no_difference(engine: AsyncEngine) -> None:
    def diff(sync_conn):  # type: ignore[no-untyped-def]
        context = MigrationContext.configure(sync_conn, opts={"compare_type": True})
        return compare_metadata(context, Base.metadata)

    async with engine.connect() as conn:
        assert await conn.run_sync(diff) == []


async def test_at_head_and_upgrade_is_idempotent(engine: AsyncEngine) -> None:
    head = migrate.head_revision()
    assert head is not None
    assert await migrate.current_revision(engine) == head
    await migrate.upgrade(engine)
    assert await migrate.current_revision(engine) == head


async def test_membership_table_is_indexed_both_ways(engine: AsyncEngine) -> None:
    def describe(sync_conn):  # type: ignore[no-untyped-def]
        insp = inspect(sync_conn)
        return insp.get_pk_constraint("group_members"), insp.get_indexes("group_members")

    async with engine.connect() as conn:
        pk, indexes = await conn.run_sync(describe)
    assert pk["constrained_columns"] == ["group_id", "user_id"]
    assert any(ix["column_names"] == ["user_id"] for ix in indexes)
