"""Shared fixtures: real SQLite and PostgreSQL databases migrated with Alembic, real apps."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from resolver.config import DatabaseSettings, NatsSettings, Settings
from resolver.db import migrate
from resolver.db.engine import create_engine
from resolver.sealing import generate_master_key_file
from tests.support.postgres import PostgresCluster


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """``postgresql+asyncpg://postgres@127.0.0.1:PORT`` of a cluster private to this session."""
    given = os.environ.get("RESOLVER_TEST_POSTGRES_URL")
    if given:
        yield given.rstrip("/")
        return
    cluster = PostgresCluster()
    url = cluster.start()
    try:
        yield url
    finally:
        cluster.stop()


@pytest.fixture
def postgres_url(postgres_server_url: str) -> Iterator[str]:
    """A fresh, empty database for one test."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    admin = postgres_server_url.replace("+asyncpg", "") + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"{postgres_server_url}/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'resolver.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using this runs twice: on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'resolver.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    generate_master_key_file(data_dir / "master.key")
    return replace(
        Settings(data_dir=data_dir),
        database=DatabaseSettings(url=db_url),
        nats=NatsSettings(enabled=False),
    )


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """An engine on a database migrated to head with Alembic (never ``create_all``)."""
    eng = create_engine(settings.database_url)
    await migrate.upgrade(eng)
    try:
        yield eng
    finally:
        await eng.dispose()
