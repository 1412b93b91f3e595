"""A role edit under live users, on a real nats-server: what the server does, checked.

The stack of test_deprovision (the service, a real nats-server on ``resolver: URL(...)``),
person credentials from the admin API. Observed with nats-server 2.15.1: when the pushed
account JWT changes a scoped key's template, the server closes the connections signed by that
key at once (its debug log says "Client connection closed: Authentication Failure"; the client
gets no -ERR, just the closed socket), and the client reconnecting with the same user JWT gets
the new template. Users of the account's other keys keep their connections. So a role edit
needs no revocation: one re-sign and push of each account using the role moves its live users
to the new rules.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.support.stack import Api, connect, may_publish, refused_publish, wait_for

pytestmark = pytest.mark.e2e

WRITER = {"name": "writer", "publish": ["orders.>"], "subscribe": ["orders.>", "billing.>"]}
READER = {"name": "reader", "subscribe": ["orders.>"]}


async def person_creds(service: Api, user: str) -> tuple[dict[str, Any], Any]:
    """Issue through the admin API; the answer and a 0600 creds file."""
    issued = await service.ok(
        "POST", f"/admin/v1/users/{user}/credentials", {"account": "orders", "ttl": "1h"}
    )
    path = service.tmp / f"{user}.creds"
    path.write_text(issued["creds"])
    path.chmod(0o600)
    return issued, path


async def verdict(service: Api, subject: str) -> bool:
    answer = await service.ok(
        "GET",
        "/admin/v1/explain",
        token="admin:read",
        params={"user": "alice", "account": "orders", "subject": subject, "op": "pub"},
    )
    return bool(answer["allowed"])


async def test_a_role_edit_moves_live_users_to_the_new_rules(service: Api) -> None:
    await service.account("orders")
    await service.ok("POST", "/admin/v1/roles", WRITER)
    await service.ok("POST", "/admin/v1/roles", READER)
    await service.group("eng", [await service.user("alice")])
    await service.group("audit", [await service.user("bob")])
    await service.binding("orders", "writer", group="eng")
    await service.binding("orders", "reader", group="audit")

    issued, alice_creds = await person_creds(service, "alice")
    # The first creds of a role set created its scoped key: the API waited for the push,
    # so they work at once on this server, which has the account loaded.
    assert issued["new_signing_key"] is True and issued["account_pushed"] is True
    bob_issued, bob_creds = await person_creds(service, "bob")
    assert bob_issued["signing_key"] != issued["signing_key"]
    workload = await service.ok(
        "POST", "/admin/v1/accounts/orders/users", {"name": "etl", "ttl": "1h"}
    )
    etl_creds = service.tmp / "etl.creds"
    etl_creds.write_text(workload["creds"])

    # alice is a real client: nats-py reconnects by itself, with the same creds file.
    alice = await connect(service, alice_creds, reconnect=True, attempts=40)
    bob = await connect(service, bob_creds)
    etl = await connect(service, etl_creds)
    await may_publish(alice, "orders.new")
    await refused_publish(alice, "billing.new")
    assert await verdict(service, "billing.new") is False

    wider = {**WRITER, "publish": ["orders.>", "billing.>"]}
    answer = await service.ok("PUT", "/admin/v1/roles/writer", wider)
    answered = time.perf_counter()
    assert answer["accounts_resigned"] == 1
    async with asyncio.timeout(10):
        await alice.lost.wait()
    # The server drops her the moment the push lands (a few ms here); 2 s leaves room for
    # a loaded machine.
    assert alice.lost_at[0] - answered < 2.0, alice.lost_at[0] - answered
    async with asyncio.timeout(10):
        await alice.reconnected.wait()
    # The same connection object, the same user JWT, the new template.
    await may_publish(alice, "billing.new")
    assert await verdict(service, "billing.new") is True

    # Users signed by the account's other keys were not touched.
    await service.pushed("orders")
    await asyncio.sleep(0.3)
    assert not bob.lost.is_set() and not etl.lost.is_set()
    assert bob.nc.is_connected and etl.nc.is_connected
    await may_publish(etl, "orders.etl")

    narrower = {**WRITER, "publish": ["audit.>"]}
    await service.ok("PUT", "/admin/v1/roles/writer", narrower)

    async def reconnected_twice() -> bool | None:
        return (alice.nc.stats["reconnects"] >= 2 and alice.nc.is_connected) or None

    await wait_for(reconnected_twice, what="alice's second reconnect", within=10)
    await refused_publish(alice, "orders.new")
    assert await verdict(service, "orders.new") is False

    # An edit that changes nothing re-signs nothing and leaves the connection alone.
    unchanged = await service.ok("PUT", "/admin/v1/roles/writer", narrower)
    assert unchanged["accounts_resigned"] == 0
    await asyncio.sleep(0.3)
    assert alice.nc.stats["reconnects"] == 2 and alice.nc.is_connected
    assert not bob.lost.is_set()
