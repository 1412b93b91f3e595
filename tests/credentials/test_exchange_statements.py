"""The credentials hot path's statements straight on sqlite3 (resolver.db.statements) give
what SQLAlchemy gives: same rows, same types, same rows written. Each statement of the
exchange is run both ways on one database, in one transaction, and compared."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from resolver.accounts.service import (
    _INSERT_ISSUED,
    get_account,
    record_issued_keys,
)
from resolver.audit.service import Actor, AuditRow, record_all
from resolver.credentials import exchange
from resolver.db.models import AuditEntry, Binding, IssuedUserKey, Role
from resolver.db.statements import CoreStatements, SqliteStatements, statements_on
from resolver.natsjwt import new_keypair
from tests.credentials.conftest import World

Sessions = async_sessionmaker[AsyncSession]
on_sqlite = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def _rows(rows: list[Any]) -> list[tuple[Any, ...]]:
    return sorted((tuple(row) for row in rows), key=repr)


async def _both(session: AsyncSession) -> tuple[CoreStatements, SqliteStatements]:
    conn = await session.connection()
    raw = await statements_on(conn)
    assert isinstance(raw, SqliteStatements)
    return CoreStatements(conn), raw


async def test_the_hot_path_runs_on_sqlite3_only_where_it_can(
    sessions: Sessions, db_url: str
) -> None:
    async with sessions() as session:
        found = await statements_on(await session.connection())
    expected = SqliteStatements if db_url.startswith("sqlite") else CoreStatements
    assert type(found) is expected


@on_sqlite
async def test_each_read_of_the_exchange_gives_the_same_rows_both_ways(
    sessions: Sessions, world: World
) -> None:
    now = datetime.now(UTC)
    async with sessions() as session, session.begin():
        orders = await get_account(session, "ORDERS")
        # Bindings that end: the ``now`` parameter (a datetime) must compare as SQLAlchemy
        # stores it, or the ended one would be read as live (or the live one as ended).
        role = Role(name="temp", spec={"publish": {"allow": ["t.>"]}})
        session.add(role)
        await session.flush()
        for ends, value in (
            (now - timedelta(hours=1), "ended"),
            (now + timedelta(hours=1), "live"),
        ):
            session.add(
                Binding(
                    account_id=orders.id,
                    role_id=role.id,
                    claim_name="roles",
                    claim_value=value,
                    ends_at=ends,
                )
            )
        await session.flush()
        core, raw = await _both(session)
        everyone = ["alice@example.com", "olga@example.com", "dave@example.com", "nobody@x"]
        cases: list[tuple[Any, dict[str, Any]]] = [
            (
                exchange._grants_statement(("email",), True),
                {"now": now, "names": ["groups", "roles"], "values_email": everyone},
            ),
            (
                exchange._grants_statement(("email", "userName"), False),
                {"now": now, "values_email": ["olga@example.com"], "values_userName": ["carol"]},
            ),
            (exchange._grants_statement(("id",), False), {"now": now, "values_id": []}),
            (
                exchange._CLAIM_GRANTS_IN_ACCOUNTS,
                {"now": now, "names": ["roles"], "account_ids": [orders.id, 999]},
            ),
            (exchange._LOCK, {"account_id": orders.id}),
            (exchange._LOCK, {"account_id": 999}),
        ]
        for statement, params in cases:
            through_sqlalchemy = _rows(await core.rows(statement, params))
            assert _rows(await raw.rows(statement, params)) == through_sqlalchemy, statement
        grants = await raw.rows(cases[0][0], cases[0][1])
        # Not vacuous: people, the inactive one, the claim grants (the ended one left out),
        # and columns converted as SQLAlchemy converts them.
        assert {row[1] for row in grants} == {"alice", "olga", "dave", None}
        assert {row[11] for row in grants if row[0] is None} == {"ci-deployer", "live"}
        assert {type(row[2]) for row in grants if row[0] is not None} == {bool}
        assert all(isinstance(row[9], dict) for row in grants if row[9] is not None)
        assert len(await raw.rows(exchange._LOCK, {"account_id": orders.id})) == 1


@on_sqlite
async def test_the_keys_read_under_the_lock_gives_the_same_rows_both_ways(
    sessions: Sessions, world: World
) -> None:
    mine, theirs = new_keypair("user")[0], new_keypair("user")[0]
    async with sessions() as session, session.begin():
        orders = await get_account(session, "ORDERS")
        core, raw = await _both(session)
        rows = [
            _issued(orders.id, key, user_id=world.users["alice"] if key == mine else None)
            for key in (mine, theirs)
        ]
        await raw.execute_many(_INSERT_ISSUED, rows)
        params = {
            "account_ids": [orders.id],
            "public_keys": [mine, theirs, new_keypair("user")[0]],
            "role_sets": ["writer"],
        }
        found = _rows(await raw.rows(exchange._KEYS_UNDER_LOCK, params))
        assert found == _rows(await core.rows(exchange._KEYS_UNDER_LOCK, params))
        assert {(row[0], row[2], row[3]) for row in found} == {
            ("issued", mine, world.users["alice"]),
            ("issued", theirs, None),
        }


def _issued(account_id: int, key: str, *, user_id: str | None = None) -> dict[str, Any]:
    now = int(time.time())
    return {
        "public_key": key,
        "account_id": account_id,
        "user_id": user_id,
        "name": "alice",
        "signing_key": new_keypair("account")[0],
        "jti": "J" * 52,
        "issued_at": now,
        "expires_at": now + 600,
    }


@on_sqlite
async def test_rows_written_on_sqlite3_read_back_as_sqlalchemy_would_have_written_them(
    sessions: Sessions, world: World
) -> None:
    keys = [new_keypair("user")[0] for _ in range(3)]
    details = {"via": "token", "roles": ["writer"], "nested": {"n": 1, "none": None}}
    async with sessions() as session, session.begin():
        orders = await get_account(session, "ORDERS")
        orders_key = orders.public_key
        core, raw = await _both(session)
        ids = await record_issued_keys(raw, [_issued(orders.id, key) for key in keys], ids=True)
        actor = Actor("alice", "rid", "127.0.0.1")
        await record_all(raw, [AuditRow(actor, "t.raw", "A1", details, "alice", orders.public_key)])
        await record_all(
            core, [AuditRow(actor, "t.core", "A1", details, "alice", orders.public_key)]
        )
    async with sessions() as session:
        by_id = {k.id: k.public_key for k in await session.scalars(select(IssuedUserKey))}
        assert [by_id[i] for i in ids] == keys  # the ids, in the rows' order
        written = {e.action: e for e in await session.scalars(select(AuditEntry))}
    raw_entry, core_entry = written["t.raw"], written["t.core"]
    assert raw_entry.details == core_entry.details == details
    assert raw_entry.at.tzinfo is not None
    assert abs(raw_entry.at - core_entry.at) < timedelta(seconds=5)
    assert (raw_entry.actor, raw_entry.request_id, raw_entry.source, raw_entry.target) == (
        "alice",
        "rid",
        "127.0.0.1",
        "A1",
    )
    assert (raw_entry.user_name, raw_entry.account_key) == ("alice", orders_key)
    assert (core_entry.user_name, core_entry.account_key) == ("alice", orders_key)
    # Stored alike: SQLite compares ``at`` as text, so the two must have one shape.
    query = text("SELECT action, at FROM audit_log WHERE action LIKE 't.%'")
    async with sessions() as session:
        stored = {action: at for action, at in await session.execute(query)}
    assert re.sub(r"\d", "0", stored["t.raw"]) == re.sub(r"\d", "0", stored["t.core"])


@on_sqlite
async def test_a_missing_value_is_an_error_not_a_guess(sessions: Sessions, world: World) -> None:
    async with sessions() as session, session.begin():
        _core, raw = await _both(session)
        with pytest.raises(KeyError, match="account_id"):
            await raw.rows(exchange._LOCK, {})
        # ``at`` has a Python-side default, which only SQLAlchemy's execution applies.
        with pytest.raises(ValueError, match="at"):
            await raw.execute_many(insert(AuditEntry), [{"actor": "a", "action": "b"}])


@on_sqlite
async def test_data_version_moves_when_another_connection_commits(
    sessions: Sessions, engine: AsyncEngine, world: World
) -> None:
    async with sessions() as session:
        _core, raw = await _both(session)
        before = raw.data_version()
        assert raw.data_version() == before
        async with engine.connect() as other:
            # Another pooled connection of the same engine counts as another connection.
            await other.execute(text("UPDATE accounts SET name = name"))
            await other.commit()
        assert raw.data_version() != before
