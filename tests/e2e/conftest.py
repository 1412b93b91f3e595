"""The live stack for end-to-end tests (see tests/support/stack.py): ``nats-iam-resolver
serve`` and a real nats-server on its ``resolver: URL(...)``, both on 127.0.0.1.

- ``service``: a fresh stack for one test, on SQLite and on PostgreSQL (like ``db_url``);
- ``stack``: one stack shared by a whole module (tests there use distinct names), on
  SQLite and on PostgreSQL; ``api`` is a per-test HTTP client for it.

Tests speak to the stack as outsiders do: SCIM and the admin API over HTTP, NATS with
creds files.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from aiohttp import ClientSession

from tests.support.stack import (
    Api,
    Person,
    Stack,
    connect,
    may_publish,
    patch,
    refused_connect,
    refused_publish,
)

# The names earlier tests import from here.
Service = Api
__all__ = [
    "Api",
    "Person",
    "Service",
    "Stack",
    "connect",
    "may_publish",
    "patch",
    "refused_connect",
    "refused_publish",
]


@pytest.fixture
async def service(tmp_path: Path, db_url: str) -> AsyncIterator[Api]:
    """A stack of its own for one test."""
    stack = Stack.start(
        tmp_path / "stack", database_url=None if db_url.startswith("sqlite") else db_url
    )
    try:
        async with ClientSession() as http:
            api = Api.of(stack, http, tmp_path)
            try:
                yield api
            finally:
                await api.close_clients()
    finally:
        stack.stop()


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """One stack for the module, on a fresh database."""
    workdir = tmp_path_factory.mktemp("stack")
    if request.param == "sqlite":
        started = Stack.start(workdir)
        try:
            yield started
        finally:
            started.stop()
        return
    server = request.getfixturevalue("postgres_server_url")
    name = f"e2e_{uuid.uuid4().hex[:12]}"
    admin = server.replace("+asyncpg", "") + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        started = Stack.start(workdir, database_url=f"{server}/{name}")
        try:
            yield started
        finally:
            started.stop()
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def api(stack: Stack, tmp_path: Path) -> AsyncIterator[Api]:
    """An HTTP client for the module's stack; NATS clients it opened are closed after."""
    async with ClientSession() as http:
        client = Api.of(stack, http, tmp_path)
        try:
            yield client
        finally:
            await client.close_clients()
