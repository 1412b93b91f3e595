"""Deleting many rows without holding the database's write lock for all of them."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import ColumnElement, delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker


async def delete_in_batches(
    sessions: async_sessionmaker[AsyncSession],
    model: Any,
    *where: ColumnElement[bool],
    batch_size: int,
) -> int:
    """Delete the rows of ``model`` (which has an ``id``) matching ``where``, ``batch_size``
    at a time, each batch in a transaction of its own; how many went.

    One statement for a year of rows would hold SQLite's one write lock (and, on
    PostgreSQL, a transaction's worth of WAL and row locks) for as long as it takes,
    stalling every credentials request meanwhile. Deleting by a condition is idempotent,
    so replicas running it at once do no harm.
    """
    deleted = 0
    while True:
        async with sessions() as session, session.begin():
            # By id: the same statement on SQLite and PostgreSQL (neither takes
            # DELETE ... LIMIT portably).
            batch = select(model.id).where(*where).order_by(model.id).limit(batch_size)
            result = await session.execute(
                delete(model)
                .where(model.id.in_(batch.scalar_subquery()))
                .execution_options(synchronize_session=False)
            )
            gone = max(0, result.rowcount or 0)
        deleted += gone
        if gone < batch_size:
            return deleted
        await asyncio.sleep(0)  # let requests waiting for the database in between
