"""Roles on a live server: explain agrees with what nats-server allows and denies.

What a role edit does to live users: test_role_change.py.

Same stack as test_deprovision: the service in process, a real nats-server on
``resolver: URL(...)``, person credentials from the admin API.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.e2e.conftest import Service, connect

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


WRITER = {
    "name": "writer",
    "publish": {"allow": ["orders.>", "acct.{{account-name()}}.>"], "deny": ["orders.admin.>"]},
    "subscribe": ["orders.*"],
}
AUDITOR = {
    "name": "auditor",
    "publish": ["orders.admin.read", "audit.{{tag(group)}}.>"],
    "subscribe": {"allow": ["audit.>", "orders.>"], "deny": ["orders.secret.*"]},
}
#: subject → allowed, for alice holding writer (via eng) and auditor (via Auditors).
SET_PUB = {
    "orders.eu.new": True,
    # auditor allows it, writer denies orders.admin.>: one scoped key, a deny in any role wins.
    "orders.admin.read": False,
    "acct.orders.x": True,
    "acct.billing.x": False,
    "audit.eng.x": True,
    "audit.auditors.x": True,
    "audit.ops.x": False,
    "billing.x": False,
    "_INBOX.x": False,
}
SET_SUB = {
    "orders.eu": True,
    "orders.eu.x": True,
    "orders.secret.x": False,
    "audit.x.y": True,
    "_INBOX.abc": True,
    "billing.x": False,
}


async def test_explain_agrees_with_nats_server_for_a_role_set(service: Service) -> None:
    await service.ok("POST", "/admin/v1/accounts", {"name": "orders"})
    await service.ok("POST", "/admin/v1/roles", WRITER)
    await service.ok("POST", "/admin/v1/roles", AUDITOR)
    alice_id = await service.user("alice")
    await service.group("eng", [alice_id])
    await service.group("Auditors", [alice_id])
    await service.binding("orders", "writer", group="eng")
    await service.binding("orders", "auditor", group="Auditors")
    alice = await connect(service, await service.creds("alice", "orders"))

    for subject in SET_PUB:
        await alice.nc.publish(subject, b"x")
    seen = await violations(alice.nc, alice.errors)
    for subject, expected in SET_PUB.items():
        refused = f'publish to "{subject.lower()}"' in seen
        answer = await explain(service, subject, "pub")
        assert (answer["allowed"], not refused) == (expected, expected), (subject, answer, seen)
    alice.errors.clear()
    for subject in SET_SUB:
        await alice.nc.subscribe(subject)
    seen = await violations(alice.nc, alice.errors)
    for subject, expected in SET_SUB.items():
        refused = f'subscription to "{subject.lower()}"' in seen
        answer = await explain(service, subject, "sub")
        assert (answer["allowed"], not refused) == (expected, expected), (subject, answer, seen)
    denied = await explain(service, "orders.admin.read", "pub")
    assert "deny 'orders.admin.>' of role 'writer'" in denied["explanation"]
