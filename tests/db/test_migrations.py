"""The models and the Alembic migrations describe the same schema, on both backends."""

from __future__ import annotations

import subprocess
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import AsyncEngine

from resolver.db import migrate
from resolver.db.models import Base
from tests.support.processes import resolver_bin


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


def test_concurrent_migrations_are_serialised_on_postgresql(
    postgres_url: str, tmp_path: Path
) -> None:
    """Replicas starting at once (separate processes): the advisory lock makes them take turns.

    Separate processes, because Alembic's ``context`` is process-global: two migrations in one
    event loop would share it, which no deployment does.
    """
    config = tmp_path / "r.toml"
    config.write_text(f'[database]\nurl = "{postgres_url}"\n')
    procs = [
        subprocess.Popen(
            [resolver_bin(), "migrate", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [proc.communicate(timeout=120)[0] for proc in procs]
    head = migrate.head_revision()
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out
        assert f"database at revision {head}" in out
