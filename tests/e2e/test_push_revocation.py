"""Revocation reaches live connections: the service, a real NATS cluster, a real user.

Two clusters of two nats-servers each, as the service meets them: one on
``resolver: URL(...)`` pointing at the running service, one on the full nats resolver. In
both, a workload user connects with creds signed by the account, publishes and subscribes;
the account is re-signed with a revocation of that user and pushed; the live connection is
closed, a new connect is refused, and the reply of every server is recorded. Then an outage:
nats-server is stopped while three updates happen, restarted, and the last one wins.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import nats
import pytest
from aiohttp import ClientSession, web
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from resolver.accounts.service import (
    create_account,
    get_account,
    issue_workload_creds,
    revoke_user_key,
)
from resolver.app import create_app
from resolver.appkeys import PUSHER
from resolver.config import ServerSettings, Settings
from resolver.db.models import Account, Operator
from resolver.http.pushing import wake_pusher
from resolver.push.state import PUSH_CONNECTION
from resolver.sealing import Sealer
from tests.accounts.conftest import ADMIN, bearer
from tests.push.conftest import (  # noqa: F401  (fixtures)
    operator,
    outbox,
    push_settings,
    sealer,
    sessions,
    sys_creds,
    system_account,
    tokens,
    wait_for,
)
from tests.support.nats import (
    NatsServer,
    full_resolver_config,
    lookup_account_jwt,
    server_names,
    url_resolver_config,
    with_cluster,
)
from tests.support.ports import free_port

pytestmark = pytest.mark.e2e

SERVERS = ("n1", "n2")


@dataclass
class Stack:
    kind: str
    settings: Settings
    app: web.Application
    servers: list[NatsServer]
    creds: Path
    tmp: Path
    clients: list[Any] = field(default_factory=list)

    @property
    def sessions(self) -> async_sessionmaker[AsyncSession]:
        from resolver.appkeys import SESSIONMAKER

        return self.app[SESSIONMAKER]


def _cluster(tmp: Path, render: Callable[[NatsServer], str]) -> list[NatsServer]:
    servers = [NatsServer(tmp / "nats", name) for name in SERVERS]
    cluster_ports = [free_port() for _ in servers]
    for server, port in zip(servers, cluster_ports, strict=True):
        others = [p for p in cluster_ports if p != port]
        server.configure(with_cluster(render(server), cluster_port=port, routes=others))
    return servers


@pytest.fixture(params=["url", "full"])
async def stack(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    settings: Settings,
    operator: Operator,
    system_account: Account,
    sys_creds: Path,
    aiohttp_server: Callable[..., Any],
) -> AsyncIterator[Stack]:
    """The service (in process, on 127.0.0.1) and two clustered nats-servers."""
    http_port = free_port()
    base = replace(settings, server=ServerSettings(host="127.0.0.1", port=http_port))
    servers: list[NatsServer] = []
    if request.param == "url":
        servers = _cluster(
            tmp_path,
            lambda s: url_resolver_config(
                operator_jwt=operator.jwt or "",
                system_account_key=system_account.public_key,
                resolver_base_url=base.public_url,
                port=s.port,
                name=s.name,
            ),
        )
    else:
        servers = _cluster(
            tmp_path,
            lambda s: full_resolver_config(
                operator_jwt=operator.jwt or "",
                system_account_key=system_account.public_key,
                system_account_jwt=system_account.jwt or "",
                jwt_dir=tmp_path / "nats" / f"jwt-{s.name}",
                port=s.port,
                name=s.name,
            ),
        )
    full = push_settings(base, servers[0].url, sys_creds)
    app = create_app(full)
    # The URL resolver refuses to start unless the service answers: service first.
    await aiohttp_server(app, host="127.0.0.1", port=http_port)
    result = Stack(request.param, full, app, servers, sys_creds, tmp_path)
    try:
        for server in servers:
            await server.start_async()
        names = await server_names(servers[0].url, sys_creds, expect=len(servers))
        assert names == list(SERVERS), names
        await wait_for(
            lambda: _value(app[PUSH_CONNECTION].connected), what="the pusher's connection"
        )
        yield result
    finally:
        for nc in result.clients:
            if not nc.is_closed:
                await nc.close()
        for server in servers:
            server.stop()


async def _value(value: Any) -> Any:
    return value


async def _committed_push(stack: Stack, account_key: str) -> Any:
    """Wait until the newest outbox row of the account is done; that row."""

    async def done() -> Any:
        rows = await outbox(stack.sessions, account_key)
        return rows[-1] if rows and rows[-1].status == "done" else None

    return await wait_for(done, what=f"the push of {account_key}")


async def _create_account(stack: Stack, sealer: Sealer, name: str) -> Account:
    async with stack.sessions() as session, session.begin():
        account = await create_account(session, sealer, stack.settings, name=name, actor=ADMIN)
    wake_pusher(stack.app)
    return account


async def _issue(stack: Stack, sealer: Sealer, account_name: str, name: str) -> tuple[Path, str]:
    async with stack.sessions() as session, session.begin():
        account = await get_account(session, account_name)
        creds, issued = await issue_workload_creds(
            session, sealer, account, name=name, ttl_seconds=3600, actor=ADMIN
        )
    path = stack.tmp / f"{name}.creds"
    path.write_text(creds)
    path.chmod(0o600)
    return path, issued.public_key


async def _revoke(stack: Stack, sealer: Sealer, account_name: str, user_key: str) -> str:
    async with stack.sessions() as session, session.begin():
        account = await get_account(session, account_name)
        await revoke_user_key(
            session, sealer, stack.settings, account, user_key, actor=ADMIN, reason="left"
        )
        jwt = account.jwt or ""
    wake_pusher(stack.app)
    return jwt


async def test_revocation_closes_the_live_connection_and_refuses_new_ones(
    stack: Stack,
    sealer: Sealer,
    tokens: dict[str, str],
) -> None:
    account = await _create_account(stack, sealer, "orders")
    # A full resolver only learns accounts by push: it must have landed before a connect.
    await _committed_push(stack, account.public_key)
    creds, user_key = await _issue(stack, sealer, "orders", "worker")

    lost = asyncio.Event()
    lost_at: list[float] = []
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    async def on_disconnect() -> None:
        lost_at.append(time.monotonic())
        lost.set()

    # The user connects to the server the pusher is not connected to.
    user_url = stack.servers[1].url
    nc = await nats.connect(
        user_url,
        user_credentials=str(creds),
        allow_reconnect=False,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
    )
    stack.clients.append(nc)
    sub = await nc.subscribe("orders.>")
    await nc.publish("orders.created", b"1")
    msg = await sub.next_msg(timeout=2)
    assert msg.data == b"1"

    # A system observer on the pusher's server notes when the push arrives there (on
    # another server its interest might not have crossed the route yet).
    observer = await nats.connect(stack.servers[0].url, user_credentials=str(stack.creds))
    stack.clients.append(observer)
    pushed_at: list[float] = []
    seen_push = asyncio.Event()

    async def on_push(msg: Any) -> None:
        pushed_at.append(time.monotonic())
        seen_push.set()

    await observer.subscribe(f"$SYS.REQ.ACCOUNT.{account.public_key}.CLAIMS.UPDATE", cb=on_push)
    await observer.flush()

    committed = time.monotonic()
    revoked_jwt = await _revoke(stack, sealer, "orders", user_key)
    async with asyncio.timeout(10):
        await lost.wait()
        await seen_push.wait()  # the observer's copy may be processed just after
    push_to_disconnect = (lost_at[0] - pushed_at[0]) * 1000
    print(
        f"\n[{stack.kind} resolver] commit -> push {(pushed_at[0] - committed) * 1000:.1f} ms, "
        f"push -> client disconnect callback {push_to_disconnect:.1f} ms"
    )
    # The server said why before closing (nats-py keeps it as the last error).
    assert "revoked" in str(nc.last_error).lower(), (nc.last_error, errors)

    with pytest.raises(nats.errors.Error) as refused:
        await nats.connect(
            user_url, user_credentials=str(creds), allow_reconnect=False, connect_timeout=2
        )
    assert "authorization" in str(refused.value).lower()

    row = await _committed_push(stack, account.public_key)
    assert row.jwt == revoked_jwt
    answered = {(r["server"], r["subject"].split(".")[2]) for r in row.results}
    if stack.kind == "url":
        # URL resolvers answer only the per-account subject.
        assert answered == {("n1", "ACCOUNT"), ("n2", "ACCOUNT")}
    else:
        assert answered == {(n, s) for n in SERVERS for s in ("ACCOUNT", "CLAIMS")}
    assert all(r["code"] == 200 for r in row.results), row.results
    # n2 had the account loaded (the user was connected there): it applied the update.
    assert any(
        r["server"] == "n2" and r["result"] == "updated" and ".ACCOUNT." in r["subject"]
        for r in row.results
    )

    async with ClientSession() as http:
        response = await http.get(
            f"{stack.settings.public_url}/admin/v1/push", headers=bearer(tokens["admin:read"])
        )
        body = await response.json()
    assert [s["server"] for s in body["servers"]] == list(SERVERS)
    assert all(s["jti"] == row.jti for s in body["servers"])


async def test_outage_three_updates_then_restart_the_last_one_wins(
    stack: Stack,
    sealer: Sealer,
) -> None:
    account = await _create_account(stack, sealer, "billing")
    await _committed_push(stack, account.public_key)
    keys = [(await _issue(stack, sealer, "billing", f"w{i}"))[1] for i in range(3)]
    before = len(await outbox(stack.sessions, account.public_key))

    for server in stack.servers:
        server.stop()
    await wait_for(lambda: _value(not stack.app[PUSH_CONNECTION].connected), what="the disconnect")
    jwts = [await _revoke(stack, sealer, "billing", key) for key in keys]
    stack.app[PUSHER].wake()
    await asyncio.sleep(1.0)  # the pusher tries, fails and backs off meanwhile
    rows = (await outbox(stack.sessions, account.public_key))[before:]
    assert len(rows) == 3 and all(r.status != "done" for r in rows)
    assert rows[-1].attempts >= 1 and rows[-1].last_error

    # n2 first: n1, the pusher's server, then routes to it as it starts, so the pusher's
    # reconnect (polled every second) finds the cluster whole and both servers answer.
    for server in reversed(stack.servers):
        await server.start_async()
    row = await _committed_push(stack, account.public_key)
    assert row.jwt == jwts[-1]
    rows = (await outbox(stack.sessions, account.public_key))[before:]
    assert [r.status for r in rows] == ["superseded", "superseded", "done"]
    assert {r["server"] for r in row.results} == set(SERVERS)

    if stack.kind == "full":
        # Every full resolver holds the newest JWT (it kept the older one on disk).
        for server in stack.servers:
            held = await lookup_account_jwt(server.url, stack.creds, account.public_key)
            assert held == jwts[-1], server.name
    # Whatever the resolver kind: every revoked key is refused at connect.
    for i in range(3):
        with pytest.raises(nats.errors.Error):
            await nats.connect(
                stack.servers[i % 2].url,
                user_credentials=str(stack.tmp / f"w{i}.creds"),
                allow_reconnect=False,
                connect_timeout=2,
            )
