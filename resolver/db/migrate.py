"""Run Alembic migrations from inside the service (``init``, ``migrate``, tests, ``/readyz``)."""

from __future__ import annotations

import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATIONS_ENV = "RESOLVER_MIGRATIONS_DIR"


def migrations_dir() -> Path:
    """``migrations/`` beside the package (a source checkout), or ``$RESOLVER_MIGRATIONS_DIR``."""
    if os.environ.get(MIGRATIONS_ENV):
        return Path(os.environ[MIGRATIONS_ENV])
    return Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _upgrade(connection: Connection, revision: str) -> None:
    cfg = alembic_config()
    # env.py uses this connection (and its transaction) instead of opening its own.
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, revision)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Migrate to ``revision`` in one transaction (on PostgreSQL under an advisory lock)."""
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade, revision)


async def current_revision(engine: AsyncEngine) -> str | None:
    def read(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with engine.connect() as conn:
        return await conn.run_sync(read)
