"""Connection audit against the product as an operator runs it and a real nats-server 2.15.1.

``serve`` subscribes to ``$SYS.ACCOUNT.*.CONNECT``/``DISCONNECT`` as the system user; a client
connecting with creds the service issued must show up in the audit log under the person's
SCIM userName, with its address, name, library, the server and the disconnect reason, and
without the JWT it presented. Creds signed by hand with the account's key (never issued by
the service) must be recorded as unknown, whatever name they claim. The audit rows are read
from the service's database (SQLite and PostgreSQL); counters from ``GET /metrics``.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import nats
import pytest
from nats.aio.client import __version__ as nats_py_version
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from resolver.accounts.signing import plain_signing_key
from resolver.config import Settings, load_settings
from resolver.db.engine import create_engine, create_sessionmaker
from resolver.db.models import Account, AuditEntry
from resolver.natsjwt import encode, format_creds, new_keypair, parse_creds, user_claims
from resolver.sealing import Sealer, load_master_key
from tests.support.stack import Api, Stack, wait_for

pytestmark = pytest.mark.e2e

Rows = list[AuditEntry]


def stack_settings(stack: Stack) -> Settings:
    return load_settings(stack.config, env=stack.env)


@asynccontextmanager
async def database(stack: Stack) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(stack_settings(stack).database_url)
    try:
        yield create_sessionmaker(engine)
    finally:
        await engine.dispose()


async def connection_rows(
    stack: Stack, client_name: str, count: int, *, within: float = 15.0
) -> Rows:
    """The audit rows of the connections named ``client_name``, once there are ``count``."""
    async with database(stack) as sessions:

        async def probe() -> Rows:
            async with sessions() as session:
                rows = list(
                    await session.scalars(
                        select(AuditEntry)
                        .where(AuditEntry.action.in_(["nats.connect", "nats.disconnect"]))
                        .order_by(AuditEntry.id)
                    )
                )
            mine = [r for r in rows if r.details.get("client", {}).get("name") == client_name]
            return mine if len(mine) >= count else []

        return await wait_for(probe, what=f"audit rows of {client_name}", within=within, every=0.1)


async def wait_recording(stack: Stack) -> None:
    """Until the service's subscription is up: a probe connection (as the system user the
    service issued) shows up in the audit log. Connections before that go unrecorded."""
    for _ in range(30):
        name = f"probe-{uuid.uuid4().hex[:8]}"
        nc = await nats.connect(stack.nats_url, user_credentials=str(stack.sys_creds), name=name)
        await nc.close()
        try:
            await connection_rows(stack, name, 2, within=2)
            return
        except TimeoutError:
            continue
    raise AssertionError("the service never recorded a connection")


async def metric(api: Api, name: str, **labels: str) -> float:
    text = await api.ok("GET", "/metrics", token="admin:read")
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


async def connect_and_close(url: str, creds: Path, name: str, *, publish: str) -> None:
    nc = await nats.connect(url, user_credentials=str(creds), name=name, allow_reconnect=False)
    try:
        await nc.publish(publish, b"hello")
        await nc.flush()
    finally:
        await nc.close()


async def test_a_person_s_connection_is_audited_under_their_scim_user_name(
    api: Api, stack: Stack
) -> None:
    await wait_recording(stack)
    person = "carol.conn@example.com"
    user_id = await api.user(person)
    await api.group("CONN-people", [user_id])
    account = await api.account("CONN")
    await api.role("conn-role", publish=["conn.>"], subscribe=["conn.>"])
    await api.binding("CONN", "conn-role", group="CONN-people")
    creds = await api.creds(person, "CONN")
    user_jwt, _ = parse_creds(creds.read_text())
    user_key = json.loads(_payload(user_jwt))["sub"]
    before = {
        event: await metric(api, "nir_nats_connections_seen_total", account="CONN", event=event)
        for event in ("connect", "disconnect")
    }

    nc = await nats.connect(
        api.nats_url, user_credentials=str(creds), name="carol-laptop", allow_reconnect=False
    )
    try:
        await nc.publish("conn.orders", b"hello")
        await nc.flush()

        async def gauge_is_one() -> bool:
            value = await metric(api, "nir_nats_client_connections", account="CONN")
            return value == 1

        # The servers' own count of CONN's connections, while carol is connected.
        await wait_for(gauge_is_one, what="nir_nats_client_connections of CONN", within=10)
    finally:
        await nc.close()

    connected, disconnected = await connection_rows(stack, "carol-laptop", 2)
    assert (connected.action, disconnected.action) == ("nats.connect", "nats.disconnect")
    for row in (connected, disconnected):
        assert row.actor == person and row.user_name == person
        assert row.account_key == account["public_key"] and row.target == user_key
        assert row.source == "127.0.0.1"
        details = row.details
        assert details["identity_source"] == "issued" and details["user_id"] == user_id
        assert details["account"] == "CONN" and details["user_key"] == user_key
        client = details["client"]
        assert client["name"] == "carol-laptop" and client["host"] == "127.0.0.1"
        assert client["lang"] == "python3" and client["version"] == nats_py_version
        assert client["kind"] == "Client"
        assert details["server"]["name"] == "n1" and details["server"]["id"].startswith("N")
        assert details["server"]["version"] == "2.15.1"
        # The JWT the client presented is in nats-server's event; it is not in the row.
        text = json.dumps(details)
        assert user_jwt.split(".")[1] not in text and "eyJ" not in text
    assert disconnected.details["reason"] == "Client Closed"
    assert disconnected.details["sent"]["msgs"] >= 1  # the publish above
    assert "reason" not in connected.details
    assert connected.details["client"]["id"] == disconnected.details["client"]["id"]

    async def counted() -> bool:
        for event in ("connect", "disconnect"):
            now = await metric(api, "nir_nats_connections_seen_total", account="CONN", event=event)
            if now - before[event] != 1:
                return False
        return True

    await wait_for(counted, what="nir_nats_connections_seen_total of CONN", within=5)

    async def gauge_gone() -> bool:
        return await metric(api, "nir_nats_client_connections", account="CONN") == 0

    await wait_for(gauge_gone, what="CONN to leave nir_nats_client_connections", within=10)


async def test_a_deprovisioned_person_s_disconnect_says_the_credentials_were_revoked(
    api: Api, stack: Stack
) -> None:
    await wait_recording(stack)
    person = "dan.conn@example.com"
    user_id = await api.user(person)
    await api.group("GONE-people", [user_id])
    await api.account("GONE")
    await api.role("gone-role", subscribe=["gone.>"])
    await api.binding("GONE", "gone-role", group="GONE-people")
    creds = await api.creds(person, "GONE")
    nc = await nats.connect(
        api.nats_url, user_credentials=str(creds), name="dan-laptop", allow_reconnect=False
    )
    try:
        await api.scim("DELETE", f"/Users/{user_id}")  # the IdP removes dan
        _, disconnected = await connection_rows(stack, "dan-laptop", 2)
    finally:
        await nc.close()
    assert disconnected.action == "nats.disconnect"
    assert disconnected.details["reason"] == "Credentials Revoked"
    # The SCIM user is gone; the name the key was issued under still says who it was.
    assert disconnected.actor == person and disconnected.user_name == person


async def test_creds_made_by_hand_are_recorded_as_unknown_whatever_name_they_claim(
    api: Api, stack: Stack, tmp_path: Path
) -> None:
    await wait_recording(stack)
    account = await api.account("HAND")
    # Signed with the account's own signing key (as someone holding the database and the
    # master key could), but never issued by the service; it claims to be someone else.
    creds = await _hand_made_creds(stack, "HAND", "carol.conn@example.com", tmp_path)
    await connect_and_close(api.nats_url, creds, "hand-made-client", publish="hand.x")

    connected, disconnected = await connection_rows(stack, "hand-made-client", 2)
    for row in (connected, disconnected):
        assert row.actor == "unknown" and row.user_name is None
        assert row.account_key == account["public_key"]
        assert row.details["identity_source"] == "unknown"
        # What it claims is shown, apart, never as the identity.
        assert row.details["jwt_name"] == "carol.conn@example.com"
        assert row.details["account"] == "HAND"
    assert disconnected.details["reason"] == "Client Closed"


async def test_recording_goes_on_after_nats_server_restarts(api: Api, stack: Stack) -> None:
    await wait_recording(stack)
    assert stack.nats is not None
    stack.nats.stop()
    await stack.nats.start_async()
    # The service was not restarted: its client reconnected and sent its (queue)
    # subscriptions again, or nothing after the restart would be recorded.
    await wait_recording(stack)
    account = await api.account("AFTER")
    creds = await _hand_made_creds(stack, "AFTER", "after@example.com", stack.workdir)
    await connect_and_close(api.nats_url, creds, "after-restart", publish="after.x")
    rows = await connection_rows(stack, "after-restart", 2)
    assert [r.account_key for r in rows] == [account["public_key"]] * 2


async def _hand_made_creds(stack: Stack, account_name: str, claimed: str, tmp: Path) -> Path:
    settings = stack_settings(stack)
    sealer = Sealer(load_master_key(settings.master_key_path))
    async with database(stack) as sessions, sessions() as session:
        account = await session.scalar(select(Account).where(Account.name == account_name))
        assert account is not None
        signer = await plain_signing_key(session, account)
        seed = sealer.open(signer.seed_sealed)
    user_key, user_seed = new_keypair("user")
    token = encode(user_claims(claimed, user_key, issuer_account=account.public_key), seed)
    path = tmp / "hand-made.creds"
    path.write_text(format_creds(token, user_seed))
    path.chmod(0o600)
    return path


def _payload(token: str) -> bytes:
    part = token.split(".")[1]
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
