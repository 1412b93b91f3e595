"""Compiled roles, checked against what a real nats-server (with JetStream) allows and denies.

A self-contained operator: a memory resolver preloaded with the system account and one
JetStream-enabled account whose scoped signing keys carry the compiled role templates.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.errors import TimeoutError as NatsTimeoutError

from resolver.natsjwt import (
    account_claims,
    encode,
    format_creds,
    new_keypair,
    operator_claims,
    scoped_signing_key,
    user_claims,
)
from resolver.natsjwt.account_parts import account_limits
from resolver.policy.decide import Identity, decide
from resolver.policy.roles import compile_template, parse_role, role_set_name
from tests.support.ports import free_port, wait_for_port
from tests.support.processes import Process, nats_server_bin

pytestmark = pytest.mark.e2e

ROLES = {
    "orders": {
        "publish": {"allow": ["orders.{{name()}}.>"], "deny": ["orders.{{name()}}.secret"]},
        "subscribe": ["orders.>"],
    },
    "kv-read": {"jetstream": [{"kv": "config", "access": "read"}]},
    "kv-write": {"jetstream": [{"kv": "config", "access": "write"}]},
    "kv-admin": {"jetstream": [{"kv": "config", "access": "manage"}]},
    "orders-admin": {
        "jetstream": [{"stream": "ORDERS", "access": "manage", "subjects": ["orders.>"]}]
    },
    "orders-reader": {"jetstream": [{"stream": "ORDERS", "access": "read"}]},
    "team": {
        "publish": {"allow": ["team.{{tag(team)}}.>"], "deny": ["team.*.payroll"]},
        "subscribe": {"allow": ["team.>", "alerts.*"], "deny": ["team.{{tag(team)}}.private"]},
    },
}
#: Each role alone, plus a set of two (one scoped key whose template is their union).
ROLE_SETS = [[name] for name in ROLES] + [["orders", "team"]]


class Operator:
    """Keys and JWTs of a throw-away operator with one application account."""

    def __init__(self) -> None:
        self.op_pub, self.op_seed = new_keypair("operator")
        self.sk_pub, self.sk_seed = new_keypair("operator")
        self.sys_pub, self.sys_seed = new_keypair("account")
        self.acc_pub, self.acc_seed = new_keypair("account")
        self.scoped: dict[str, tuple[str, bytes]] = {}
        keys = []
        for names in ROLE_SETS:
            roles = [parse_role(name, ROLES[name]) for name in names]
            pub, seed = new_keypair("account")
            self.scoped[role_set_name(roles)] = (pub, seed)
            keys.append(scoped_signing_key(pub, role_set_name(roles), compile_template(roles)))
        self.operator_jwt = encode(
            operator_claims(
                "op", self.op_pub, signing_keys=[self.sk_pub], system_account=self.sys_pub
            ),
            self.op_seed,
        )
        self.sys_jwt = encode(account_claims("SYS", self.sys_pub), self.sk_seed)
        limits = account_limits(mem_storage=-1, disk_storage=-1, streams=-1, consumer=-1)
        self.acc_jwt = encode(
            account_claims("APP", self.acc_pub, limits=limits, signing_keys=keys), self.sk_seed
        )

    def creds(self, role: str, user: str, tags: tuple[str, ...] = ()) -> str:
        _, key_seed = self.scoped[role]
        user_pub, user_seed = new_keypair("user")
        claims = user_claims(
            user, user_pub, issuer_account=self.acc_pub, scoped=True, tags=list(tags)
        )
        return format_creds(encode(claims, key_seed), user_seed)


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Operator, Path]]:
    tmp = tmp_path_factory.mktemp("roles")
    op = Operator()
    port = free_port()
    conf = tmp / "nats.conf"
    conf.write_text(
        f"listen: 127.0.0.1:{port}\n"
        f"operator: {op.operator_jwt}\n"
        f"system_account: {op.sys_pub}\n"
        f"jetstream: {{store_dir: '{tmp / 'js'}'}}\n"
        "resolver: MEMORY\n"
        f"resolver_preload: {{\n  {op.sys_pub}: {op.sys_jwt}\n  {op.acc_pub}: {op.acc_jwt}\n}}\n"
    )
    server = Process([nats_server_bin(), "-c", str(conf)], tmp / "nats.log")
    try:
        wait_for_port(port)
        yield f"nats://127.0.0.1:{port}", op, tmp
    finally:
        server.stop()


Connect = Callable[[str, str], Any]


@pytest.fixture
async def connect(
    nats_url: tuple[str, Operator, Path],
) -> AsyncIterator[Callable[[str, str], Any]]:
    url, op, tmp = nats_url
    clients: list[Any] = []

    async def make(role: str, user: str, tags: tuple[str, ...] = ()) -> Any:
        path = tmp / f"{user}-{role}.creds"
        path.write_text(op.creds(role, user, tags))
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc))

        nc = await nats.connect(
            url, user_credentials=str(path), error_cb=on_error, allow_reconnect=False
        )
        nc.errors = errors  # type: ignore[attr-defined]
        clients.append(nc)
        return nc

    yield make
    for nc in clients:
        await nc.close()


async def _violations(nc: Any) -> list[str]:
    """The server's permission errors so far (nats-py lower-cases them: so do we)."""
    await nc.flush()
    await asyncio.sleep(0.05)
    return [e.lower() for e in nc.errors if "permissions violation" in e.lower()]


async def test_templated_publish_permissions(connect: Connect) -> None:
    alice = await connect("orders", "alice")
    inbox: list[str] = []

    async def seen(msg: Any) -> None:
        inbox.append(msg.subject)

    await alice.subscribe("orders.>", cb=seen)
    await alice.publish("orders.alice.new", b"1")  # {{name()}} expands to the user's name
    await alice.publish("orders.bob.new", b"2")
    await alice.publish("orders.alice.secret", b"3")  # denied by the role's deny list
    await alice.publish("payments.x", b"4")  # never granted
    violations = await _violations(alice)
    assert inbox == ["orders.alice.new"]
    assert len(violations) == 3, violations
    assert any("orders.bob.new" in v for v in violations)


async def test_kv_grants(connect: Connect) -> None:
    admin = await connect("kv-admin", "admin")
    kv = await admin.jetstream().create_key_value(bucket="config")
    await kv.put("colour", b"blue")

    writer = await connect("kv-write", "writer")
    wkv = await writer.jetstream().key_value("config")
    await wkv.put("colour", b"green")

    reader = await connect("kv-read", "reader")
    rjs = reader.jetstream(timeout=0.5)
    rkv = await rjs.key_value("config")
    assert (await rkv.get("colour")).value == b"green"
    with pytest.raises(NatsTimeoutError):
        await rkv.put("colour", b"red")
    assert (await wkv.get("colour")).value == b"green"
    # A reader cannot delete the bucket; the admin can.
    with pytest.raises(NatsTimeoutError):
        await rjs.delete_key_value("config")
    violations = await _violations(reader)
    assert any('"$kv.config.colour"' in v for v in violations), violations
    assert any("$js.api.stream.delete.kv_config" in v for v in violations), violations
    assert await admin.jetstream().delete_key_value("config")


async def test_stream_read_and_manage(connect: Connect) -> None:
    admin = await connect("orders-admin", "admin")
    js = admin.jetstream()
    await js.add_stream(name="ORDERS", subjects=["orders.>"])
    await js.publish("orders.eu.new", b"o1")

    reader = await connect("orders-reader", "reader")
    rjs = reader.jetstream(timeout=0.5)
    sub = await rjs.subscribe("orders.>", stream="ORDERS", ordered_consumer=True)
    msg = await sub.next_msg(timeout=3)
    assert msg.data == b"o1"
    with pytest.raises(NatsTimeoutError):
        await rjs.delete_stream("ORDERS")
    with pytest.raises(NatsTimeoutError):
        await rjs.publish("orders.eu.new", b"forged")
    violations = await _violations(reader)
    assert any("$js.api.stream.delete.orders" in v for v in violations), violations
    assert (await js.stream_info("ORDERS")).state.messages == 1
    await js.delete_stream("ORDERS")


PUB_MATRIX = [
    "orders.alice.new",
    "orders.alice.secret",
    "orders.bob.new",
    "orders.alice",
    "team.eu.standup",
    "team.eu.payroll",
    "team.us.standup",
    "alerts.high",
    "payments.x",
]
SUB_MATRIX = [
    "orders.eu",
    "team.eu.private",
    "team.us.private",
    "team.eu.x",
    "alerts.high",
    "alerts.high.x",
    "payments.x",
    "_INBOX.abc",
]


@pytest.mark.parametrize("names", [["orders"], ["team"], ["orders", "team"], ["kv-read"]])
async def test_decide_agrees_with_nats_server(connect: Connect, names: list[str]) -> None:
    roles = [parse_role(name, ROLES[name]) for name in names]
    who = Identity(name="alice", tags=["team:eu"])
    nc = await connect(role_set_name(roles), "alice", ("team:eu",))
    for subject in PUB_MATRIX:
        await nc.publish(subject, b"x")
    await nc.flush()
    await asyncio.sleep(0.1)
    violations = "\n".join(await _violations(nc))
    for subject in PUB_MATRIX:
        decision = decide(roles, who, subject, "pub")
        refused = f'publish to "{subject.lower()}"' in violations
        assert decision.allowed is not refused, (subject, decision.reason, violations)
        assert "allowed" in decision.reason if decision.allowed else "denied" in decision.reason

    for subject in SUB_MATRIX:
        await nc.subscribe(subject)
    await nc.flush()
    await asyncio.sleep(0.1)
    violations = "\n".join(await _violations(nc))
    # The publish probes above left their own violations: only subscriptions are read here.
    for subject in SUB_MATRIX:
        decision = decide(roles, who, subject, "sub")
        refused = f'subscription to "{subject.lower()}"' in violations
        assert decision.allowed is not refused, (subject, decision.reason, violations)
