"""Live deprovisioning, end to end: IdP change over SCIM → revocation → dropped connection.

The service runs in process on 127.0.0.1 with its pusher; a real nats-server uses it as its
``resolver: URL(...)``. A person in group ``eng`` (bound to account ``orders`` with role
``writer``) gets credentials from the admin API, connects, may publish on ``orders.*`` and
is refused on ``billing.*``. Then each way of losing access, separately, must close the live
connection and refuse a reconnect with the same credentials; and losing one of two groups
bound to the account must not.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import nats
import pytest
from aiohttp import ClientSession, web

from resolver.app import create_app
from resolver.config import ServerSettings, Settings
from resolver.db.models import Account, Operator
from resolver.push.state import PUSH_CONNECTION
from tests.accounts.conftest import bearer
from tests.push.conftest import (  # noqa: F401  (fixtures)
    operator,
    push_settings,
    sealer,
    sessions,
    sys_creds,
    system_account,
    tokens,
    wait_for,
)
from tests.support.nats import NatsServer, url_resolver_config
from tests.support.ports import free_port

pytestmark = pytest.mark.e2e

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


def patch(*operations: dict[str, Any]) -> dict[str, Any]:
    return {"schemas": [PATCH_OP], "Operations": list(operations)}


@dataclass
class Service:
    """The running service and nats-server, spoken to over HTTP and NATS as outsiders do."""

    base: str
    nats_url: str
    tokens: dict[str, str]
    tmp: Path
    http: ClientSession
    clients: list[Any] = field(default_factory=list)

    async def call(
        self, method: str, path: str, body: Any = None, *, token: str = "admin"
    ) -> tuple[int, Any]:
        headers = bearer(self.tokens[token])
        if path.startswith("/scim/"):
            headers["Content-Type"] = "application/scim+json"
        async with self.http.request(
            method, self.base + path, json=body, headers=headers
        ) as response:
            text = await response.text()
            try:
                data = await response.json(content_type=None) if text else None
            except ValueError:
                data = text
            return response.status, data

    async def ok(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        status, data = await self.call(method, path, body, **kwargs)
        assert 200 <= status < 300, (method, path, status, data)
        return data

    async def scim(self, method: str, path: str, body: Any = None) -> Any:
        return await self.ok(method, "/scim/v2" + path, body, token="scim")

    async def user(self, name: str) -> str:
        body = {"schemas": [USER], "userName": name, "active": True}
        return (await self.scim("POST", "/Users", body))["id"]

    async def group(self, name: str, members: list[str]) -> str:
        body = {
            "schemas": [GROUP],
            "displayName": name,
            "members": [{"value": m} for m in members],
        }
        return (await self.scim("POST", "/Groups", body))["id"]

    async def creds(self, user: str, account: str) -> Path:
        issued = await self.ok(
            "POST", f"/admin/v1/users/{user}/credentials", {"account": account, "ttl": "1h"}
        )
        path = self.tmp / f"{user}-{account}.creds"
        path.write_text(issued["creds"])
        path.chmod(0o600)
        return path

    async def account_jti(self, account: str) -> str:
        return (await self.ok("GET", f"/admin/v1/accounts/{account}", token="admin:read"))["jti"]


@pytest.fixture
async def service(
    tmp_path: Path,
    settings: Settings,
    operator: Operator,  # noqa: F811
    system_account: Account,  # noqa: F811
    sys_creds: Path,  # noqa: F811
    tokens: dict[str, str],  # noqa: F811
    aiohttp_server: Callable[..., Any],
) -> AsyncIterator[Service]:
    http_port = free_port()
    base = replace(settings, server=ServerSettings(host="127.0.0.1", port=http_port))
    server = NatsServer(tmp_path / "nats", "n1")
    server.configure(
        url_resolver_config(
            operator_jwt=operator.jwt or "",
            system_account_key=system_account.public_key,
            resolver_base_url=base.public_url,
            port=server.port,
            name=server.name,
        )
    )
    app: web.Application = create_app(push_settings(base, server.url, sys_creds))
    # The URL resolver refuses to start unless the service answers: service first.
    await aiohttp_server(app, host="127.0.0.1", port=http_port)
    async with ClientSession() as http:
        result = Service(base.public_url, server.url, tokens, tmp_path, http)
        try:
            await server.start_async()

            async def connected() -> bool:
                return app[PUSH_CONNECTION].connected

            await wait_for(connected, what="the pusher's connection")
            yield result
        finally:
            for nc in result.clients:
                if not nc.is_closed:
                    await nc.close()
            server.stop()


@dataclass
class Person:
    """A connected person: their connection and what it went through."""

    nc: Any
    creds: Path
    errors: list[str]
    lost: asyncio.Event


async def connect(service: Service, creds: Path) -> Person:
    errors: list[str] = []
    lost = asyncio.Event()

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    async def on_disconnect() -> None:
        lost.set()

    nc = await nats.connect(
        service.nats_url,
        user_credentials=str(creds),
        allow_reconnect=False,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
    )
    service.clients.append(nc)
    return Person(nc, creds, errors, lost)


async def may_publish(person: Person, subject: str) -> None:
    sub = await person.nc.subscribe(subject)
    await person.nc.publish(subject, b"hello")
    msg = await sub.next_msg(timeout=2)
    assert msg.data == b"hello"
    await sub.unsubscribe()


async def refused_publish(person: Person, subject: str) -> None:
    await person.nc.publish(subject, b"nope")
    await person.nc.flush()
    deadline = time.monotonic() + 3
    while not any("permissions violation" in e.lower() for e in person.errors):
        assert time.monotonic() < deadline, person.errors
        await asyncio.sleep(0.02)


async def setup_orders(service: Service, *, second_group: bool = False) -> dict[str, str]:
    """Account ``orders``, role ``writer``, user ``alice`` in ``eng`` (and ``ops``)."""
    await service.ok("POST", "/admin/v1/accounts", {"name": "orders"})
    await service.ok(
        "POST",
        "/admin/v1/roles",
        {"name": "writer", "publish": ["orders.>"], "subscribe": ["orders.>"]},
    )
    alice = await service.user("alice")
    bob = await service.user("bob")
    ids = {"alice": alice, "bob": bob, "eng": await service.group("eng", [alice, bob])}
    binding = await service.ok(
        "POST", "/admin/v1/bindings", {"account": "orders", "role": "writer", "group": "eng"}
    )
    ids["binding"] = str(binding["id"])
    if second_group:
        ids["ops"] = await service.group("ops", [alice])
        await service.ok(
            "POST", "/admin/v1/bindings", {"account": "orders", "role": "writer", "group": "ops"}
        )
    return ids


async def connected_alice(service: Service) -> Person:
    person = await connect(service, await service.creds("alice", "orders"))
    await may_publish(person, "orders.new")
    await refused_publish(person, "billing.new")
    assert person.nc.is_connected  # a denied publish is an error, not a disconnect
    return person


Removal = Callable[[Service, dict[str, str]], Awaitable[None]]


async def entra_filter_removal(service: Service, ids: dict[str, str]) -> None:
    path = f'members[value eq "{ids["alice"]}"]'
    await service.scim("PATCH", f"/Groups/{ids['eng']}", patch({"op": "Remove", "path": path}))


async def entra_legacy_removal(service: Service, ids: dict[str, str]) -> None:
    op = {"op": "Remove", "path": "members", "value": [{"value": ids["alice"]}]}
    await service.scim("PATCH", f"/Groups/{ids['eng']}", patch(op))


async def okta_removal(service: Service, ids: dict[str, str]) -> None:
    # Okta's group push: remove one member and (re)add others in one PATCH.
    await service.scim(
        "PATCH",
        f"/Groups/{ids['eng']}",
        patch(
            {"op": "replace", "value": {"id": ids["eng"], "displayName": "eng"}},
            {"op": "remove", "path": f'members[value eq "{ids["alice"]}"]'},
            {"op": "add", "path": "members", "value": [{"value": ids["bob"], "display": "bob"}]},
        ),
    )


async def entra_deactivation(service: Service, ids: dict[str, str]) -> None:
    op = {"op": "Replace", "path": "active", "value": "False"}
    await service.scim("PATCH", f"/Users/{ids['alice']}", patch(op))


async def okta_deactivation(service: Service, ids: dict[str, str]) -> None:
    await service.scim(
        "PATCH", f"/Users/{ids['alice']}", patch({"op": "replace", "value": {"active": False}})
    )


async def user_deletion(service: Service, ids: dict[str, str]) -> None:
    await service.scim("DELETE", f"/Users/{ids['alice']}")


async def binding_deletion(service: Service, ids: dict[str, str]) -> None:
    await service.ok("DELETE", f"/admin/v1/bindings/{ids['binding']}")


async def group_deletion(service: Service, ids: dict[str, str]) -> None:
    await service.scim("DELETE", f"/Groups/{ids['eng']}")


@pytest.mark.parametrize(
    "removal",
    [
        entra_filter_removal,
        entra_legacy_removal,
        okta_removal,
        entra_deactivation,
        okta_deactivation,
        user_deletion,
        binding_deletion,
        group_deletion,
    ],
    ids=lambda f: f.__name__,
)
async def test_losing_access_closes_the_live_connection(service: Service, removal: Removal) -> None:
    ids = await setup_orders(service)
    alice = await connected_alice(service)
    bob = await connect(service, await service.creds("bob", "orders"))

    started = time.monotonic()
    await removal(service, ids)
    async with asyncio.timeout(10):
        await alice.lost.wait()
    took = (time.monotonic() - started) * 1000
    print(f"\n[{removal.__name__}] request -> disconnect {took:.1f} ms")
    assert "revoked" in str(alice.nc.last_error).lower(), (alice.nc.last_error, alice.errors)

    with pytest.raises(nats.errors.Error) as refused:
        await nats.connect(
            service.nats_url,
            user_credentials=str(alice.creds),
            allow_reconnect=False,
            connect_timeout=2,
        )
    assert "authorization" in str(refused.value).lower()
    # Only alice was cut: bob, in the same group, keeps working (the binding and group
    # deletions take bob too, by design).
    if removal not in (binding_deletion, group_deletion):
        assert bob.nc.is_connected
        await may_publish(bob, "orders.bob")


async def test_losing_one_of_two_bound_groups_keeps_the_connection(service: Service) -> None:
    ids = await setup_orders(service, second_group=True)
    alice = await connected_alice(service)
    jti = await service.account_jti("orders")

    await entra_filter_removal(service, ids)  # out of eng, still in ops
    await asyncio.sleep(0.5)  # a revocation push would have landed and closed it by now
    assert await service.account_jti("orders") == jti  # nothing to revoke: no new JWT
    assert alice.nc.is_connected and not alice.lost.is_set()
    await may_publish(alice, "orders.still")

    # Leaving the second group too is the end of it.
    path = f'members[value eq "{ids["alice"]}"]'
    await service.scim("PATCH", f"/Groups/{ids['ops']}", patch({"op": "remove", "path": path}))
    async with asyncio.timeout(10):
        await alice.lost.wait()
    assert "revoked" in str(alice.nc.last_error).lower()
