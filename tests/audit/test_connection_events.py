"""Connection events as audit rows, without NATS: parsing, identities, batching, overflow.

The event bodies are shaped as nats-server 2.15.1 sends them (``ConnectEventMsg`` and
``DisconnectEventMsg``, captured on loopback); tests/e2e/test_connection_audit.py checks the
same against the real server. Real SQLite and PostgreSQL, real keys.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import event as sa_event
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from resolver.audit.connection_recorder import ConnectionCounts, ConnectionRecorder
from resolver.audit.connections import parse_connection_event, record_connection_events
from resolver.config import NatsSettings, Settings
from resolver.db.engine import create_engine, create_sessionmaker
from resolver.db.models import (
    Account,
    AuditEntry,
    AuthCalloutKeys,
    IssuedUserKey,
    Operator,
    User,
)
from resolver.natsjwt import encode, user_claims
from resolver.natsjwt.keys import new_keypair
from tests.accounts import conftest as accounts_fixtures
from tests.support.ports import free_port

operator = accounts_fixtures.operator
sealer = accounts_fixtures.sealer
sessions = accounts_fixtures.sessions

Sessions = async_sessionmaker[AsyncSession]


def user_jwt(name: str, user_key: str, account_key: str) -> str:
    """A real user JWT signed by a throwaway account signing key (only its name is read)."""
    _, seed = new_keypair("account")
    return encode(user_claims(name, user_key, issuer_account=account_key), seed)


def event(
    kind: str,
    account: str,
    user: str,
    *,
    account_name: str = "ORDERS",
    name: str = "orders-app",
    jwt: str | None = None,
    cid: int = 8,
    reason: str = "Client Closed",
) -> bytes:
    """A connect or disconnect event as nats-server 2.15.1 publishes it."""
    client: dict[str, Any] = {
        "start": "2026-11-26T21:28:12.49962434Z",
        "host": "10.1.2.3",
        "id": cid,
        "acc": account,
        "user": user,
        "name": name,
        "lang": "python3",
        "ver": "2.16.0",
        "issuer_key": "ADCW7F6BPODVNX5ZNTQR4MIQ7HTDMZMXE54ZH3ZC35ZWKRO4DDR45KVX",
        "name_tag": account_name,
        "tags": ["group:orders-people"],
        "kind": "Client",
        "client_type": "nats",
        "nonce": "should-not-be-kept",
    }
    if jwt:
        client["jwt"] = jwt
    body: dict[str, Any] = {
        "type": f"io.nats.server.advisory.v1.client_{kind}",
        "id": f"AA8rSqHHypN48YDpxfCZ{cid:02d}",
        "timestamp": "2026-11-26T21:28:12.507504172Z",
        "server": {
            "name": "n1",
            "host": "127.0.0.1",
            "id": "NCTM43NA5VL4F6OMFR37JQHACUR4SG27ML2HFKUUJ26PRQE643FIRVRV",
            "ver": "2.15.1",
            "jetstream": False,
            "flags": 0,
            "seq": 20,
            "time": "2026-11-26T21:28:12.507569875Z",
        },
        "client": client,
    }
    if kind == "disconnect":
        client["rtt"] = 2505661
        client["stop"] = "2026-11-26T21:28:13.509006129Z"
        body["sent"] = {"msgs": 3, "bytes": 15}
        body["received"] = {"msgs": 1, "bytes": 5}
        body["reason"] = reason
    return json.dumps(body).encode()


class World:
    def __init__(self, account: str, person_key: str, workload_key: str) -> None:
        self.account = account
        self.person_key = person_key
        self.workload_key = workload_key


@pytest.fixture
async def world(sessions: Sessions, operator: Operator) -> World:
    """Account ORDERS; dora (a SCIM user) and a workload each with an issued user key."""
    account_key = new_keypair("account")[0]
    person_key, workload_key = new_keypair("user")[0], new_keypair("user")[0]
    async with sessions() as session, session.begin():
        account = Account(operator_id=operator.id, name="ORDERS", public_key=account_key)
        dora = User(user_name="dora@example.com", user_name_key="dora@example.com")
        session.add_all([account, dora])
        await session.flush()
        for key, name, user_id in (
            (person_key, "dora@example.com", dora.id),
            (workload_key, "billing-batch", None),
        ):
            session.add(
                IssuedUserKey(
                    public_key=key,
                    account_id=account.id,
                    user_id=user_id,
                    name=name,
                    signing_key=new_keypair("account")[0],
                    jti="J" * 52,
                    issued_at=1_795_728_491,
                )
            )
    return World(account_key, person_key, workload_key)


async def rows(sessions: Sessions) -> list[AuditEntry]:
    async with sessions() as session:
        return list(
            await session.scalars(
                select(AuditEntry).where(AuditEntry.action.like("nats.%")).order_by(AuditEntry.id)
            )
        )


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# -- parsing -------------------------------------------------------------------------------


def test_a_disconnect_keeps_what_an_auditor_needs_and_never_the_jwt_or_nonce() -> None:
    account, user = new_keypair("account")[0], new_keypair("user")[0]
    token = user_jwt("someone@example.com", user, account)
    parsed = parse_connection_event(event("disconnect", account, user, jwt=token))
    assert parsed is not None
    assert parsed.action == "nats.disconnect" and parsed.event == "disconnect"
    assert parsed.account_label == "ORDERS" and parsed.jwt_name == "someone@example.com"
    assert parsed.at.isoformat() == "2026-11-26T21:28:12.507504+00:00"
    details = parsed.details
    assert details["client"] == {
        "host": "10.1.2.3",
        "id": 8,
        "name": "orders-app",
        "lang": "python3",
        "version": "2.16.0",
        "kind": "Client",
        "type": "nats",
        "issuer_key": "ADCW7F6BPODVNX5ZNTQR4MIQ7HTDMZMXE54ZH3ZC35ZWKRO4DDR45KVX",
        "tags": ["group:orders-people"],
        "start": "2026-11-26T21:28:12.49962434Z",
        "stop": "2026-11-26T21:28:13.509006129Z",
        "rtt_ms": 2.506,
    }
    assert details["server"]["name"] == "n1" and details["server"]["version"] == "2.15.1"
    assert details["reason"] == "Client Closed"
    assert details["sent"] == {"msgs": 3, "bytes": 15}
    assert details["received"] == {"msgs": 1, "bytes": 5}
    assert details["user_key"] == user and details["account_key"] == account
    text = json.dumps(details)
    assert token not in text and token.split(".")[1] not in text
    assert "should-not-be-kept" not in text


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'{"type": "io.nats.server.advisory.v1.account_connections", "acc": "A"}',
        b'{"type": "io.nats.server.advisory.v1.client_connect", "client": {"user": "U"}}',
        b'{"type": "io.nats.server.advisory.v1.client_connect", "client": "nope"}',
    ],
)
def test_anything_but_a_connection_event_is_ignored(data: bytes) -> None:
    assert parse_connection_event(data) is None


def test_client_chosen_strings_are_cut_short() -> None:
    account, user = new_keypair("account")[0], new_keypair("user")[0]
    parsed = parse_connection_event(event("connect", account, user, name="x" * 5000))
    assert parsed is not None and len(parsed.details["client"]["name"]) == 200


# -- identities and rows (real database) ---------------------------------------------------


async def test_rows_name_the_person_the_workload_and_mark_unknown_keys(
    sessions: Sessions, world: World
) -> None:
    stranger = new_keypair("user")[0]
    events = [
        parse_connection_event(event("connect", world.account, world.person_key, cid=1)),
        parse_connection_event(event("connect", world.account, world.workload_key, cid=2)),
        parse_connection_event(
            event(
                "connect",
                world.account,
                stranger,
                cid=3,
                jwt=user_jwt("dora@example.com", stranger, world.account),
            )
        ),
        # dora's key, but in an account it was never issued in: someone else signed that.
        parse_connection_event(
            event("disconnect", new_keypair("account")[0], world.person_key, cid=4)
        ),
        # An auth-callout client: nats-server shows the name our callout gave it.
        parse_connection_event(event("connect", world.account, "erin@example.com", cid=5)),
        parse_connection_event(event("connect", world.account, "[REDACTED]", cid=6)),
    ]
    async with sessions() as session, session.begin():
        await record_connection_events(session, [e for e in events if e is not None])
    written = await rows(sessions)
    seen = [(r.actor, r.user_name, r.details["identity_source"]) for r in written]
    assert seen == [
        ("dora@example.com", "dora@example.com", "issued"),
        ("billing-batch", "billing-batch", "issued"),
        ("unknown", None, "unknown"),
        ("unknown", None, "unknown"),
        ("erin@example.com", "erin@example.com", "callout"),
        ("unknown", None, "unknown"),
    ]
    dora, workload, stranger_row = written[0], written[1], written[2]
    assert dora.account_key == world.account and dora.target == world.person_key
    assert dora.source == "10.1.2.3" and dora.details["user_id"]
    assert "user_id" not in workload.details
    # What the hand-made JWT claims is kept for the auditor, never taken as the identity.
    assert stranger_row.details["jwt_name"] == "dora@example.com"
    assert stranger_row.at.isoformat().startswith("2026-11-26T21:28:12.507504")


async def test_the_auth_callout_service_s_own_connection_is_named_as_the_service(
    sessions: Sessions, world: World
) -> None:
    callout_user = new_keypair("user")[0]
    async with sessions() as session, session.begin():
        account = await session.scalar(select(Account).where(Account.public_key == world.account))
        assert account is not None
        session.add(
            AuthCalloutKeys(
                account_id=account.id,
                user_public_key=callout_user,
                user_seed_sealed=b"sealed",
                xkey_public_key=new_keypair("curve")[0],
                xkey_seed_sealed=b"sealed",
                sentinel_public_key=new_keypair("user")[0],
                sentinel_seed_sealed=b"sealed",
                sentinel_jwt="not used here",
            )
        )
    parsed = parse_connection_event(event("connect", world.account, callout_user))
    assert parsed is not None
    async with sessions() as session, session.begin():
        await record_connection_events(session, [parsed])
    [row] = await rows(sessions)
    assert row.actor == "nats-iam-resolver auth callout"
    assert row.details["identity_source"] == "service"


async def test_a_renamed_person_shows_under_their_current_user_name(
    sessions: Sessions, world: World
) -> None:
    async with sessions() as session, session.begin():
        dora = await session.scalar(select(User).where(User.user_name == "dora@example.com"))
        assert dora is not None
        dora.user_name, dora.user_name_key = "dora.smith@example.com", "dora.smith@example.com"
    parsed = parse_connection_event(event("connect", world.account, world.person_key))
    assert parsed is not None
    async with sessions() as session, session.begin():
        await record_connection_events(session, [parsed])
    assert [r.user_name for r in await rows(sessions)] == ["dora.smith@example.com"]


# -- batching and overflow -----------------------------------------------------------------


@pytest.fixture
def commits(engine: AsyncEngine) -> Iterator[list[int]]:
    """One entry per transaction committed on ``engine``."""
    seen: list[int] = []

    def on_commit(_conn: Any) -> None:
        seen.append(1)

    sa_event.listen(engine.sync_engine, "commit", on_commit)
    try:
        yield seen
    finally:
        sa_event.remove(engine.sync_engine, "commit", on_commit)


def recorder_for(sessions: Sessions, **kwargs: Any) -> ConnectionRecorder:
    # Nothing listens on this port: the recorder is used without its NATS side here.
    nats = NatsSettings(servers=(f"nats://127.0.0.1:{free_port()}",))
    return ConnectionRecorder(sessions, nats, Path("/nonexistent/sys.creds"), **kwargs)


async def test_a_burst_is_written_in_batches_not_one_transaction_per_event(
    sessions: Sessions, world: World, commits: list[int]
) -> None:
    recorder = recorder_for(sessions, batch_rows=40)
    seen_before = sample("nir_nats_connections_seen_total", account="ORDERS", event="connect")
    for cid in range(100):
        assert recorder.accept(event("connect", world.account, world.person_key, cid=cid))
    assert len(recorder.buffer) == 100
    del commits[:]
    assert await recorder.flush() == 100
    assert len(commits) == 3  # 40 + 40 + 20, each batch one transaction
    assert len(await rows(sessions)) == 100 and len(recorder.buffer) == 0
    seen_after = sample("nir_nats_connections_seen_total", account="ORDERS", event="connect")
    assert seen_after - seen_before == 100


async def test_a_full_buffer_drops_new_events_and_counts_them(
    sessions: Sessions, world: World
) -> None:
    recorder = recorder_for(sessions, max_buffered=5)
    dropped_before = sample("nir_nats_connection_events_dropped_total", reason="overflow")
    for cid in range(8):
        recorder.accept(event("connect", world.account, world.person_key, cid=cid))
    assert len(recorder.buffer) == 5 and recorder.buffer.dropped == 3
    dropped = sample("nir_nats_connection_events_dropped_total", reason="overflow")
    assert dropped - dropped_before == 3
    await recorder.flush()
    # The oldest five were kept (in order): a storm's start is not overwritten by its end.
    assert [r.details["client"]["id"] for r in await rows(sessions)] == [0, 1, 2, 3, 4]


async def test_the_flusher_writes_a_burst_shortly_after_it_arrives(
    sessions: Sessions, world: World, commits: list[int]
) -> None:
    recorder = recorder_for(sessions, flush_seconds=0.05)
    recorder.start()  # NATS is not there: it keeps trying, the flusher runs regardless
    try:
        del commits[:]
        for cid in range(30):
            recorder.accept(event("connect", world.account, world.person_key, cid=cid))
        for _ in range(100):
            if len(await rows(sessions)) == 30:
                break
            await asyncio.sleep(0.02)
        assert len(await rows(sessions)) == 30
        assert len(commits) == 1
    finally:
        await recorder.stop()


async def test_stopping_writes_what_is_still_buffered(sessions: Sessions, world: World) -> None:
    recorder = recorder_for(sessions, flush_seconds=60)
    recorder.start()
    for cid in range(3):
        recorder.accept(event("disconnect", world.account, world.workload_key, cid=cid))
    await recorder.stop()
    assert [r.action for r in await rows(sessions)] == ["nats.disconnect"] * 3


async def test_a_batch_the_database_refuses_is_retried_then_dropped_and_counted(
    settings: Settings, world: World
) -> None:
    # A database without the schema: every write fails, for real.
    empty = create_engine(f"sqlite+aiosqlite:///{settings.data_dir / 'empty.db'}")
    try:
        recorder = recorder_for(create_sessionmaker(empty), retry_seconds=0.01)
        failed_before = sample("nir_nats_connection_events_dropped_total", reason="write_failed")
        for cid in range(4):
            recorder.accept(event("connect", world.account, world.person_key, cid=cid))
        assert await recorder.flush() == 4
        failed = sample("nir_nats_connection_events_dropped_total", reason="write_failed")
        assert failed - failed_before == 4 and len(recorder.buffer) == 0
    finally:
        await empty.dispose()


# -- the connection gauge ------------------------------------------------------------------


def counts_message(account: str, server: str, conns: int, name: str = "ORDERS") -> bytes:
    """``$SYS.ACCOUNT.<A>.SERVER.CONNS`` (``AccountNumConns``) as nats-server sends it."""
    return json.dumps(
        {
            "type": "io.nats.server.advisory.v1.account_connections",
            "id": "x",
            "timestamp": "2026-11-26T21:28:12.5Z",
            "server": {"name": server, "id": f"N{server}", "ver": "2.15.1", "seq": 1},
            "acc": account,
            "name": name,
            "conns": conns,
            "leafnodes": 0,
            "total_conns": conns,
            "num_subscriptions": 3,
            "sent": {"msgs": 0, "bytes": 0},
            "received": {"msgs": 0, "bytes": 0},
            "slow_consumers": 0,
        }
    ).encode()


def test_the_gauge_sums_servers_and_forgets_a_server_that_went_silent() -> None:
    now = [1000.0]
    counts = ConnectionCounts(stale_after=90, clock=lambda: now[0])
    account = new_keypair("account")[0]
    label = f"GAUGE-{account[:8]}"

    def gauge() -> float | None:
        return REGISTRY.get_sample_value("nir_nats_client_connections", {"account": label})

    assert counts.update(counts_message(account, "n1", 3, label))
    assert counts.update(counts_message(account, "n2", 2, label))
    assert gauge() == 5
    assert counts.update(counts_message(account, "n1", 1, label))  # two left n1
    assert gauge() == 3
    assert not counts.update(b'{"type": "io.nats.server.advisory.v1.client_connect"}')
    now[0] += 60
    counts.update(counts_message(account, "n1", 1, label))  # n1's heartbeat; n2 silent
    now[0] += 40
    counts.prune()
    assert gauge() == 1  # n2 (and its two) gone after 90 s of silence
    counts.update(counts_message(account, "n1", 0, label))
    assert gauge() is None  # an account with nothing connected leaves the metric
