"""Roles on a live server: explain agrees with nats-server, and a role edit reaches live users.

Same stack as test_deprovision: the service in process, a real nats-server on
``resolver: URL(...)``, person credentials from the admin API.
"""

from __future__ import annotations

import asyncio
from typing import Any

import nats
import pytest

from tests.e2e.conftest import Service, connect, may_publish, refused_publish

pytestmark = pytest.mark.e2e

ROLE = {
    "name": "orders-writer",
    "publish": {
        "allow": ["orders.>", "app.{{name()}}.>", "team.{{tag(group)}}.>"],
        "deny": ["orders.admin.>"],
    },
    "subscribe": {"allow": ["orders.>", "alerts.*"], "deny": ["orders.secret"]},
    "jetstream": [{"kv": "config", "access": "read"}],
}
PUB = [
    "orders.eu.new",
    "orders.admin.reset",
    "app.alice.x",
    "app.bob.x",
    "team.eng.x",
    "team.ops.x",
    "billing.x",
    "$KV.config.color",
    "$JS.API.STREAM.INFO.KV_config",
    "$JS.API.STREAM.DELETE.KV_config",
]
SUB = ["orders.eu", "orders.secret", "alerts.high", "alerts.high.x", "billing.x", "_INBOX.x"]


async def person(service: Service, role: dict[str, Any]) -> Any:
    await service.ok("POST", "/admin/v1/accounts", {"name": "orders"})
    await service.ok("POST", "/admin/v1/roles", role)
    alice = await service.user("alice")
    await service.group("eng", [alice])
    await service.ok(
        "POST", "/admin/v1/bindings", {"account": "orders", "role": role["name"], "group": "eng"}
    )
    return await connect(service, await service.creds("alice", "orders"))


async def violations(nc: Any, errors: list[str]) -> str:
    await nc.flush()
    await asyncio.sleep(0.1)
    return "\n".join(e.lower() for e in errors if "permissions violation" in e.lower())


async def explain(service: Service, subject: str, op: str) -> dict[str, Any]:
    status, answer = await service.call(
        "GET",
        "/admin/v1/explain",
        token="admin:read",
        params={"user": "alice", "account": "orders", "subject": subject, "op": op},
    )
    assert status == 200, answer
    return answer


async def test_explain_agrees_with_nats_server(service: Service) -> None:
    alice = await person(service, ROLE)
    for subject in PUB:
        await alice.nc.publish(subject, b"x")
    seen = await violations(alice.nc, alice.errors)
    for subject in PUB:
        answer = await explain(service, subject, "pub")
        refused = f'publish to "{subject.lower()}"' in seen
        assert answer["allowed"] is not refused, (subject, answer["explanation"], seen)
    alice.errors.clear()
    for subject in SUB:
        await alice.nc.subscribe(subject)
    seen = await violations(alice.nc, alice.errors)
    for subject in SUB:
        answer = await explain(service, subject, "sub")
        refused = f'subscription to "{subject.lower()}"' in seen
        assert answer["allowed"] is not refused, (subject, answer["explanation"], seen)


async def test_a_role_edit_reaches_live_users(service: Service) -> None:
    """What nats-server does when a scoped key's template changes under a live user.

    Observed (2.15.1): the server closes the connections signed by that key as soon as the
    new account JWT is pushed; the same user JWT connects again and gets the new template.
    So nothing needs revoking: one account re-sign moves every live user to the new rules.
    """
    role = {"name": "writer", "publish": ["orders.>"], "subscribe": ["orders.>", "billing.>"]}
    alice = await person(service, role)
    await may_publish(alice, "orders.new")
    await refused_publish(alice, "billing.new")

    wider = {**role, "publish": ["orders.>", "billing.>"]}
    answer = await service.ok("PUT", "/admin/v1/roles/writer", wider)
    assert answer["accounts_resigned"] == 1
    async with asyncio.timeout(10):
        await alice.lost.wait()
    assert alice.nc.last_error is not None, "the server said why it closed the connection"

    again = await connect(service, alice.creds)  # the same credentials
    await may_publish(again, "billing.new")

    narrower = {**role, "publish": ["audit.>"]}
    await service.ok("PUT", "/admin/v1/roles/writer", narrower)
    async with asyncio.timeout(10):
        await again.lost.wait()
    third = await connect(service, alice.creds)
    await refused_publish(third, "orders.new")

    # An edit that changes nothing re-signs nothing and leaves connections alone.
    unchanged = await service.ok("PUT", "/admin/v1/roles/writer", narrower)
    assert unchanged["accounts_resigned"] == 0
    await asyncio.sleep(0.3)
    assert third.nc.is_connected
    with pytest.raises(nats.errors.NoRespondersError):
        await third.nc.request("audit.ping", b"", timeout=1)
