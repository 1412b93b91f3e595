"""The batching issuer on SQLite and PostgreSQL: requests that arrive together are decided in
one transaction, each on its own merits, and one that breaks cannot take the others down."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, event, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from resolver.accounts.service import get_account, revoke_user_key
from resolver.config import Settings
from resolver.credentials import exchange
from resolver.credentials.exchange import Ask, CredentialRequest, Outcome
from resolver.credentials.identity import Identity
from resolver.credentials.issuer import CredentialIssuer
from resolver.db.engine import create_engine
from resolver.db.models import (
    AccountSigningKey,
    AuditEntry,
    Binding,
    GroupMember,
    IssuedUserKey,
    Role,
    User,
)
from resolver.db.sqlite_driver import BUSY_TIMEOUT_MS, OneTripConnection
from resolver.errors import ConflictError, PermissionDeniedError, ValidationError
from resolver.natsjwt import decode, new_keypair
from resolver.sealing import Sealer
from tests.credentials.conftest import ADMIN, WRITER, World

Sessions = async_sessionmaker[AsyncSession]


def person(name: str) -> Identity:
    return Identity(
        idp="corp",
        subject=f"00u-{name}",
        user_value=f"{name}@example.com",
        user_attribute="email",
        claims={"sub": f"00u-{name}", "email": f"{name}@example.com"},
        expires_at=int(time.time()) + 600,
    )


def workload() -> Identity:
    return Identity(
        idp="corp",
        subject="ci-runner",
        user_value=None,
        user_attribute="email",
        claims={"sub": "ci-runner", "roles": ["ci-deployer"]},
        expires_at=int(time.time()) + 600,
        workload_name="corp:ci-runner",
    )


def ask(identity: Identity, public_key: str | None, request_id: str, **wanted: Any) -> Ask:
    return Ask(
        identity,
        CredentialRequest(public_key=public_key, **wanted),
        via="token",
        source="127.0.0.1",
        request_id=request_id,
    )


@pytest.fixture
async def issuer(
    sessions: Sessions, sealer: Sealer, settings: Settings, world: World
) -> AsyncIterator[CredentialIssuer]:
    running = CredentialIssuer(sessions, sealer, settings)
    running.start()
    yield running
    await running.stop()


async def issue_all(issuer: CredentialIssuer, asks: list[Ask]) -> list[Any]:
    # Queued in one go, before the issuer's task runs again: one batch.
    return await asyncio.gather(*(issuer.issue(a) for a in asks), return_exceptions=True)


async def issued_keys(sessions: Sessions) -> list[str]:
    async with sessions() as session:
        return list(await session.scalars(select(IssuedUserKey.public_key)))


async def issue_audit(sessions: Sessions) -> dict[str, AuditEntry]:
    async with sessions() as session:
        rows = await session.scalars(
            select(AuditEntry).where(AuditEntry.action == "credentials.issue")
        )
        return {row.request_id or "": row for row in rows}


async def test_requests_that_arrive_together_share_one_transaction(
    issuer: CredentialIssuer, sessions: Sessions
) -> None:
    keys = [new_keypair("user")[0] for _ in range(12)]
    asks = [
        ask(person("alice" if i % 2 else "olga"), key, f"r{i}", account="ORDERS")
        for i, key in enumerate(keys)
    ]
    results = await issue_all(issuer, asks)
    assert issuer.batches == 1 and issuer.decided == 12
    for i, (key, result) in enumerate(zip(keys, results, strict=True)):
        claims = decode(result.jwt, expected_type="user").claims
        assert claims["sub"] == key and result.user_public_key == key
        assert claims["name"] == ("alice" if i % 2 else "olga")
    assert sorted(await issued_keys(sessions)) == sorted(keys)
    # One audit row per request, each under its own request id and person.
    audit = await issue_audit(sessions)
    assert sorted(audit) == sorted(f"r{i}" for i in range(12))
    assert {audit[f"r{i}"].actor for i in (0, 1)} == {"olga", "alice"}
    assert audit["r3"].details["user_key"] == keys[3]


async def test_each_request_in_a_batch_is_decided_on_its_own(
    issuer: CredentialIssuer, sessions: Sessions
) -> None:
    shared, alices, creds_file = new_keypair("user")[0], new_keypair("user")[0], None
    results = await issue_all(
        issuer,
        [
            ask(person("alice"), alices, "ok"),
            ask(person("carol"), new_keypair("user")[0], "unbound"),
            ask(person("dave"), new_keypair("user")[0], "inactive"),
            ask(person("alice"), "not-a-key", "bad-key"),
            ask(
                person("olga"),
                new_keypair("user")[0],
                "no-such-role",
                account="OPS",
                roles=("admin",),
            ),
            ask(person("alice"), shared, "first-holder", account="ORDERS"),
            # The same key for someone else, in the same batch: it is alice's now.
            ask(person("olga"), shared, "second-holder", account="ORDERS"),
            ask(person("olga"), creds_file, "creds-file", account="OPS"),
        ],
    )
    assert issuer.batches == 1
    by_id = dict(
        zip(
            [
                "ok",
                "unbound",
                "inactive",
                "bad-key",
                "no-such-role",
                "first-holder",
                "second-holder",
                "creds-file",
            ],
            results,
            strict=True,
        )
    )
    assert by_id["ok"].user_public_key == alices
    assert isinstance(by_id["unbound"], PermissionDeniedError)
    assert "inactive" in str(by_id["inactive"])
    assert isinstance(by_id["bad-key"], ValidationError)
    assert isinstance(by_id["no-such-role"], PermissionDeniedError)
    assert by_id["first-holder"].name == "alice"
    assert isinstance(by_id["second-holder"], ConflictError)
    assert "someone else" in str(by_id["second-holder"])
    assert by_id["creds-file"].creds and by_id["creds-file"].account_name == "OPS"
    # Only the issued ones were written.
    assert sorted(await issue_audit(sessions)) == ["creds-file", "first-holder", "ok"]
    assert len(await issued_keys(sessions)) == 3


class BreaksOn(CredentialIssuer):
    """An issuer whose transaction fails whenever the batch holds a request from
    ``source``: a stand-in for a database error one request trips."""

    def __init__(self, *args: Any, source: str) -> None:
        super().__init__(*args)
        self.poison = source
        self.transactions: list[int] = []

    async def _transaction(self, asks: list[Ask]) -> list[Outcome]:
        self.transactions.append(len(asks))
        if any(a.source == self.poison for a in asks):
            raise RuntimeError("the database went away")
        return await super()._transaction(asks)


async def test_a_batch_that_fails_is_decided_again_one_by_one(
    sessions: Sessions, sealer: Sealer, settings: Settings, world: World
) -> None:
    issuer = BreaksOn(sessions, sealer, settings, source="10.9.9.9")
    issuer.start()
    try:
        keys = [new_keypair("user")[0] for _ in range(4)]
        asks = [ask(person("alice"), key, f"r{i}") for i, key in enumerate(keys)]
        asks[2] = Ask(asks[2].identity, asks[2].request, via="token", source="10.9.9.9")
        results = await issue_all(issuer, asks)
    finally:
        await issuer.stop()
    # The batch of four failed, then each was tried alone: only the poisoned one fails.
    assert issuer.transactions == [4, 1, 1, 1, 1]
    assert isinstance(results[2], RuntimeError)
    assert [r.user_public_key for i, r in enumerate(results) if i != 2] == [
        keys[0],
        keys[1],
        keys[3],
    ]
    assert sorted(await issued_keys(sessions)) == sorted([keys[0], keys[1], keys[3]])


async def test_a_caller_that_went_away_before_its_turn_gets_nothing_issued(
    issuer: CredentialIssuer, sessions: Sessions
) -> None:
    kept, dropped = new_keypair("user")[0], new_keypair("user")[0]
    stays = asyncio.ensure_future(issuer.issue(ask(person("alice"), kept, "stays")))
    leaves = asyncio.ensure_future(issuer.issue(ask(person("alice"), dropped, "leaves")))
    await asyncio.sleep(0)  # both queued, the issuer not run yet
    leaves.cancel()
    assert (await stays).user_public_key == kept
    assert await issued_keys(sessions) == [kept]


async def test_a_request_alone_is_not_kept_waiting(
    issuer: CredentialIssuer, sessions: Sessions
) -> None:
    # Sequential callers: each is a batch of one, answered without waiting for company.
    for i in range(3):
        issued = await issuer.issue(ask(person("alice"), new_keypair("user")[0], f"r{i}"))
        assert issued.name == "alice"
    assert issuer.batches == 3
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(IssuedUserKey)) == 3


async def test_a_stopped_issuer_refuses_new_requests(issuer: CredentialIssuer) -> None:
    await issuer.stop()
    with pytest.raises(RuntimeError, match="not running"):
        await issuer.issue(ask(person("alice"), new_keypair("user")[0], "late"))


async def test_a_removal_committed_between_the_first_read_and_the_lock_is_honoured(
    issuer: CredentialIssuer,
    sessions: Sessions,
    db_url: str,
    world: World,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Another writer (its own engine: another replica, the CLI) takes alice out of eng
    # after the batch read her grants and before it locks the account. The batch must
    # see it (a re-read under the lock), or it would issue to someone just deprovisioned.
    other = create_engine(db_url)
    removed = []
    lock_accounts = exchange._lock_accounts

    async def remove_alice_first(*args: Any) -> Any:
        if not removed:
            removed.append(await _remove(other, world))
        return await lock_accounts(*args)

    monkeypatch.setattr(exchange, "_lock_accounts", remove_alice_first)
    try:
        with pytest.raises(PermissionDeniedError, match="no binding"):
            await issuer.issue(ask(person("alice"), new_keypair("user")[0], "r1"))
    finally:
        monkeypatch.undo()
        await other.dispose()
    assert removed == [1]
    assert await issued_keys(sessions) == []
    # Olga, still in eng, is issued as before: the refusal was about alice's removal.
    issued = await issuer.issue(ask(person("olga"), new_keypair("user")[0], "r2", account="ORDERS"))
    assert issued.name == "olga"


async def _remove(other: AsyncEngine, world: World) -> int:
    async with other.begin() as conn:
        result = await conn.execute(
            delete(GroupMember).where(
                GroupMember.user_id == world.users["alice"],
                GroupMember.group_id == world.groups["eng"],
            )
        )
        return int(result.rowcount)


@contextlib.contextmanager
def statements_run(engine: AsyncEngine) -> Iterator[list[str]]:
    """The start of each statement ``engine``'s connections run meanwhile: on SQLite all
    of them reach the driver's ``run`` (through SQLAlchemy or not, see
    resolver.db.statements); elsewhere SQLAlchemy sees them all."""
    statements: list[str] = []

    def note(statement: str) -> None:
        statements.append(" ".join(statement.split())[:40])

    if engine.dialect.name != "sqlite":

        def capture(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            note(statement)

        event.listen(engine.sync_engine, "before_cursor_execute", capture)
        try:
            yield statements
        finally:
            event.remove(engine.sync_engine, "before_cursor_execute", capture)
        return
    run = OneTripConnection.run

    async def noted(self: OneTripConnection, operation: str, *args: Any, **kw: Any) -> Any:
        note(operation)
        return await run(self, operation, *args, **kw)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(OneTripConnection, "run", noted)
        yield statements


async def test_what_a_batch_costs_in_statements(
    issuer: CredentialIssuer, engine: AsyncEngine, db_url: str
) -> None:
    # The hot path's budget: statements per batch, whatever its size. On SQLite, when no
    # other connection committed since the first read, the re-read under the lock is
    # skipped (PRAGMA data_version, read off the record, says nothing changed), and so is
    # the first read for people read by an earlier batch (the memo of the grants read).
    await issuer.issue(ask(person("olga"), new_keypair("user")[0], "warm", account="ORDERS"))

    async def batch_of(names: list[str]) -> list[str]:
        with statements_run(engine) as statements:
            asks = [
                ask(person(name), new_keypair("user")[0], f"r{i}", account="ORDERS")
                for i, name in enumerate(names)
            ]
            await issue_all(issuer, asks)
        return [
            s.split()[0] + (" " + s.split()[2] if s.startswith("INSERT") else "")
            for s in statements
        ]

    first = await batch_of(["alice", "olga"] * 5)
    again = await batch_of(["olga", "alice"])
    assert issuer.batches == 3
    # lock, [re-read], known and scoped keys, issued keys, audit
    under_lock = ["UPDATE", "SELECT", "INSERT issued_user_keys", "INSERT audit_log"]
    if db_url.startswith("sqlite"):
        # The warm-up made a scoped key (a rare path), so the memo starts over: the next
        # binding end and the grants are read once, then kept.
        assert first == ["SELECT", "SELECT", *under_lock]
        assert again == under_lock
    else:
        with_reread = ["SELECT", "UPDATE", "SELECT", *under_lock[1:]]
        assert first == with_reread
        assert again == with_reread


async def test_a_key_revoked_in_the_account_is_refused_and_others_in_the_batch_are_not(
    issuer: CredentialIssuer, sessions: Sessions, sealer: Sealer, settings: Settings
) -> None:
    revoked, fresh = new_keypair("user")[0], new_keypair("user")[0]
    await issuer.issue(ask(person("alice"), revoked, "first"))
    async with sessions() as session, session.begin():
        orders = await get_account(session, "ORDERS")
        await revoke_user_key(session, sealer, settings, orders, revoked, actor=ADMIN)
    again, other = await issue_all(
        issuer, [ask(person("alice"), revoked, "again"), ask(person("alice"), fresh, "fresh")]
    )
    assert isinstance(again, ConflictError) and "revoked in this account" in str(again)
    assert other.user_public_key == fresh
    # A workload may not take a person's key either (nor the reverse).
    with pytest.raises(ConflictError, match="someone else"):
        await issuer.issue(ask(workload(), fresh, "taken"))
    mine = await issuer.issue(ask(workload(), new_keypair("user")[0], "own"))
    assert mine.name == "corp:ci-runner" and mine.roles == ("deployer",)


async def test_two_people_with_the_token_s_email_are_refused_not_guessed(
    issuer: CredentialIssuer, sessions: Sessions
) -> None:
    async with sessions() as session, session.begin():
        session.add(
            User(
                user_name="alice.again",
                user_name_key="alice.again",
                email="alice@example.com",
                active=True,
                resource={"userName": "alice.again"},
            )
        )
    alice, olga = await issue_all(
        issuer,
        [
            ask(person("alice"), new_keypair("user")[0], "alice"),
            ask(person("olga"), new_keypair("user")[0], "olga", account="ORDERS"),
        ],
    )
    assert isinstance(alice, PermissionDeniedError)
    assert "more than one SCIM user has email 'alice@example.com'" in str(alice)
    assert olga.name == "olga"


@pytest.mark.parametrize("failing", ["resign_account", "record_all"])
async def test_a_batch_that_fails_writes_nothing_and_holds_no_lock(
    issuer: CredentialIssuer, sessions: Sessions, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    # A failure after the lock (on SQLite, a statement straight on sqlite3) leaves nothing
    # written, whether the batch had opened an ORM session for a rare path (alice's first
    # issue in ORDERS makes the writer role set's scoped key and re-signs) or not (the
    # audit rows of a later issue, after the issued keys were inserted).
    async def fail(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("it failed")

    if failing == "record_all":
        await issuer.issue(ask(person("alice"), new_keypair("user")[0], "warm"))
    async with sessions() as session:
        jti_before = (await get_account(session, "ORDERS")).jti
        keys_before = await session.scalar(select(func.count()).select_from(AccountSigningKey))
    issued_before = await issued_keys(sessions)
    audit_before = await issue_audit(sessions)
    monkeypatch.setattr(exchange, failing, fail)
    with pytest.raises(RuntimeError, match="it failed"):
        await issuer.issue(ask(person("alice"), new_keypair("user")[0], "r1"))
    monkeypatch.undo()
    # Nothing was left locked or half-done: the next request is issued and committed,
    # and nothing of the failed one comes with it.
    issued = await issuer.issue(ask(person("alice"), new_keypair("user")[0], "r2"))
    assert issued.new_signing_key is (failing == "resign_account")
    assert sorted(await issued_keys(sessions)) == sorted([*issued_before, issued.user_public_key])
    assert set(await issue_audit(sessions)) == {*audit_before, "r2"}
    async with sessions() as session:
        keys = await session.scalar(select(func.count()).select_from(AccountSigningKey))
        assert keys == keys_before + (failing == "resign_account")
        if failing == "record_all":
            assert (await get_account(session, "ORDERS")).jti == jti_before


async def test_a_change_another_connection_commits_between_batches_is_seen(
    issuer: CredentialIssuer, db_url: str, world: World
) -> None:
    # On SQLite the first read is kept from batch to batch (GrantsMemo); another writer's
    # commit (here: its own engine, like the CLI or a SCIM request) must end that.
    # Twice each: a first issue makes a scoped key (a rare path, which starts the memo over).
    for i in range(2):
        assert (await issuer.issue(ask(person("alice"), new_keypair("user")[0], f"r{i}"))).roles
        assert (await issuer.issue(ask(workload(), new_keypair("user")[0], f"w{i}"))).roles
    other = create_engine(db_url)
    try:
        assert await _remove(other, world) == 1
        async with other.begin() as conn:
            await conn.execute(delete(Binding).where(Binding.claim_value == "ci-deployer"))
    finally:
        await other.dispose()
    with pytest.raises(PermissionDeniedError, match="no binding"):
        await issuer.issue(ask(person("alice"), new_keypair("user")[0], "r2"))
    with pytest.raises(PermissionDeniedError, match="no binding matches"):
        await issuer.issue(ask(workload(), new_keypair("user")[0], "w2"))
    # Olga, still in eng, is issued as before.
    issued = await issuer.issue(ask(person("olga"), new_keypair("user")[0], "r3", account="ORDERS"))
    assert issued.roles == ("writer",)


async def test_a_role_another_connection_changes_is_seen_by_the_next_batch(
    issuer: CredentialIssuer, db_url: str
) -> None:
    # On SQLite a parsed role is kept with the memo: a role's change must end it, or
    # credentials would outlive a lowered max_ttl.
    for i in range(2):  # the first issue makes a scoped key, which starts the memo over
        issued = await issuer.issue(ask(person("alice"), new_keypair("user")[0], f"r{i}"))
        assert issued.expires_at - time.time() > 300  # the token's 10 minutes
    other = create_engine(db_url)
    try:
        async with other.begin() as conn:
            await conn.execute(
                update(Role).where(Role.name == "writer").values(spec={**WRITER, "max_ttl": "2m"})
            )
    finally:
        await other.dispose()
    issued = await issuer.issue(ask(person("alice"), new_keypair("user")[0], "r2"))
    assert issued.expires_at - time.time() <= 120


async def test_a_scoped_key_another_connection_retires_is_not_signed_with(
    issuer: CredentialIssuer, db_url: str, sessions: Sessions
) -> None:
    # Unsealed seeds are kept with the memo, by key id: a retired key's id is never
    # asked for again, and the next issue makes and signs with a new key.
    for i in range(2):
        first = await issuer.issue(ask(person("alice"), new_keypair("user")[0], f"r{i}"))
    other = create_engine(db_url)
    try:
        async with other.begin() as conn:
            await conn.execute(
                update(AccountSigningKey)
                .where(AccountSigningKey.role_set.is_not(None))
                .values(retired_at=datetime.now(UTC))
            )
    finally:
        await other.dispose()
    issued = await issuer.issue(ask(person("alice"), new_keypair("user")[0], "r2"))
    assert issued.new_signing_key
    assert decode(issued.jwt).issuer != decode(first.jwt).issuer


async def test_a_binding_that_ends_stops_granting_though_nothing_was_committed(
    issuer: CredentialIssuer, sessions: Sessions, world: World
) -> None:
    # Time is the one change no commit announces: a kept first read must end with the
    # first binding that ends, or the re-read it stands for would grant past the end.
    ends = datetime.now(UTC) + timedelta(seconds=1.5)
    async with sessions() as session, session.begin():
        binding = await session.scalar(
            select(Binding).where(Binding.group_id == world.groups["eng"])
        )
        assert binding is not None
        binding.ends_at = ends
    assert (await issuer.issue(ask(person("alice"), new_keypair("user")[0], "r1"))).roles
    assert (await issuer.issue(ask(person("alice"), new_keypair("user")[0], "r2"))).roles
    await asyncio.sleep((ends - datetime.now(UTC)).total_seconds() + 0.05)
    with pytest.raises(PermissionDeniedError, match="no binding"):
        await issuer.issue(ask(person("alice"), new_keypair("user")[0], "r3"))


async def test_the_issuer_gives_its_connection_back_with_the_busy_timeout(
    engine: AsyncEngine, sessions: Sessions, sealer: Sealer, settings: Settings, world: World
) -> None:
    """On SQLite the issuer keeps one connection with the busy timeout at 0 (see
    OneTripConnection.keep_busy_wait_off); the pool must not get it back that way."""
    running = CredentialIssuer(sessions, sealer, settings)
    running.start()
    try:
        await running.issue(ask(person("alice"), new_keypair("user")[0], "r1", account="ORDERS"))
        if engine.dialect.name != "sqlite":
            assert running._held is None  # a session per batch, from the pool and back
            return
        assert running._held is not None
        raw = running._held._driver._connection._conn
        assert raw.execute("PRAGMA busy_timeout").fetchone()[0] == 0
    finally:
        await running.stop()
    assert raw.execute("PRAGMA busy_timeout").fetchone()[0] == BUSY_TIMEOUT_MS
