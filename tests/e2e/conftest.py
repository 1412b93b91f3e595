"""The live stack for end-to-end tests: the service in process and a real nats-server.

The service (with its pusher) listens on 127.0.0.1; a nats-server uses it as its
``resolver: URL(...)``. Tests speak to both as outsiders do: SCIM and the admin API over
HTTP, NATS with creds files.
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
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str = "admin",
        params: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        headers = bearer(self.tokens[token])
        if path.startswith("/scim/"):
            headers["Content-Type"] = "application/scim+json"
        async with self.http.request(
            method, self.base + path, json=body, headers=headers, params=params
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
