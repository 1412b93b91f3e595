"""Token exchange against the product as an operator runs it and a real nats-server.

A local IdP stand-in signs the tokens (the one fake: the IdP is outside our control). The
client code is the README's renewal example, run as written: if the README's dozen lines stop
working, this fails.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from tests.support.idp import IdpStandIn, running_idp
from tests.support.stack import Api, Stack, patch

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_example() -> Any:
    """``connect_with_idp`` from the README's renewal example block."""
    text = README.read_text(encoding="utf-8")
    match = re.search(r"<!-- renewal example.*?-->\s*```python\n(.*?)```", text, re.S)
    assert match, "the README lost its renewal example"
    namespace: dict[str, Any] = {}
    exec(compile(match.group(1), "README.md", "exec"), namespace)
    return namespace["connect_with_idp"]


@pytest.fixture(scope="module")
def idp() -> Iterator[IdpStandIn]:
    with running_idp("corp") as stand_in:
        yield stand_in


@pytest.fixture(scope="module")
def stack(idp: IdpStandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The service trusting the stand-in (email claim = SCIM userName), and nats-server;
    the e2e ``api`` fixture speaks to it. SQLite only: tests/credentials covers PostgreSQL."""
    stack = Stack.start(
        tmp_path_factory.mktemp("exchange"),
        extra_config=idp.config(user_claim="email", user_attribute="userName"),
    )
    try:
        yield stack
    finally:
        stack.stop()


class Watched:
    """What happened to a connection: errors the server sent, disconnects."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.disconnects = 0

    def options(self) -> dict[str, Any]:
        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc).lower())

        async def on_disconnect() -> None:
            self.disconnects += 1

        return {
            "error_cb": on_error,
            "disconnected_cb": on_disconnect,
            "reconnect_time_wait": 0.05,
            "max_reconnect_attempts": 3,
        }


async def _world(api: Api, name: str, role: dict[str, Any]) -> str:
    """Account ``name``, a role, a group ``name-people`` bound to it; one person; the person."""
    person = f"{name.lower()}-person@example.com"
    user = await api.user(person)
    await api.group(f"{name}-people", [user])
    await api.account(name)
    await api.role(f"{name.lower()}-role", **role)
    await api.binding(name, f"{name.lower()}-role", group=f"{name}-people")
    return person


async def test_an_exchanged_jwt_connects_with_exactly_the_roles_permissions(
    api: Api, idp: IdpStandIn
) -> None:
    person = await _world(api, "TRADE", {"publish": ["trade.>"], "subscribe": ["trade.>"]})

    async def token() -> str:
        return idp.token("00u-trader", email=person)

    connect_with_idp = readme_example()
    watched = Watched()
    nc, renewer = await connect_with_idp(api.base, api.nats_url, token, **watched.options())
    try:
        sub = await nc.subscribe("trade.orders")
        await nc.publish("trade.orders", b"buy")
        assert (await sub.next_msg(timeout=2)).data == b"buy"
        await nc.publish("payroll.run", b"nope")
        await nc.flush()
        for _ in range(100):
            if any("permissions violation" in e for e in watched.errors):
                break
            await asyncio.sleep(0.02)
        assert any('publish to "payroll.run"' in e for e in watched.errors), watched.errors
    finally:
        renewer.cancel()
        await nc.close()


async def test_the_readme_client_renews_before_expiry_without_losing_the_connection(
    api: Api, idp: IdpStandIn
) -> None:
    # Credentials of this role live 6 s; the client renews at about 4 s, each time.
    person = await _world(
        api, "TICKS", {"subscribe": ["ticks.>"], "publish": ["ticks.>"], "max_ttl": "6s"}
    )
    tokens_given = 0

    async def token() -> str:
        nonlocal tokens_given
        tokens_given += 1
        return idp.token("00u-ticks", email=person)

    connect_with_idp = readme_example()
    watched = Watched()
    nc, renewer = await connect_with_idp(api.base, api.nats_url, token, **watched.options())
    received: list[float] = []
    try:
        sub = await nc.subscribe("ticks.clock")
        started = time.monotonic()
        while time.monotonic() - started < 14:  # more than two lifetimes
            await nc.publish("ticks.clock", b"tick")
            try:
                await sub.next_msg(timeout=1)
                received.append(time.monotonic() - started)
            except nats.errors.TimeoutError:
                pass
            await asyncio.sleep(0.25)
        assert tokens_given >= 3, "renewed at least twice"
        # nats-py closes for good on "User Authentication Expired": still connected means
        # every renewal reconnected in time.
        assert nc.is_connected and nc.last_error is None, nc.last_error
        # Messages flowed well past the first JWT's expiry (6 s), through every renewal.
        assert max(received) > 12 and len(received) > 40, received
    finally:
        renewer.cancel()
        await nc.close()

    # The control: the same JWT without renewal is cut by nats-server at its expiry.
    watched = Watched()
    nc, renewer = await connect_with_idp(
        api.base, api.nats_url, token, allow_reconnect=False, **watched.options()
    )
    renewer.cancel()
    try:
        for _ in range(200):
            if nc.is_closed:
                break
            await asyncio.sleep(0.05)
        assert "authentication expired" in str(nc.last_error).lower(), nc.last_error
    finally:
        await nc.close()


async def test_deactivation_drops_a_connection_made_with_exchanged_credentials(
    api: Api, idp: IdpStandIn
) -> None:
    person = await _world(api, "LEDGER", {"subscribe": ["ledger.>"]})

    async def token() -> str:
        return idp.token("00u-ledger", email=person)

    connect_with_idp = readme_example()
    watched = Watched()
    nc, renewer = await connect_with_idp(
        api.base, api.nats_url, token, allow_reconnect=False, **watched.options()
    )
    try:
        users = await api.scim("GET", f'/Users?filter=userName eq "{person}"')
        user_id = users["Resources"][0]["id"]
        await api.scim(
            "PATCH", f"/Users/{user_id}", patch({"op": "replace", "value": {"active": False}})
        )
        for _ in range(100):
            if nc.is_closed:
                break
            await asyncio.sleep(0.02)
        assert "authentication revoked" in str(nc.last_error).lower(), nc.last_error
        # And the IdP token alone no longer gets credentials.
        status, body = await _post(api, await token())
        assert status == 403 and "inactive" in body["message"]
    finally:
        renewer.cancel()
        await nc.close()


async def _post(api: Api, token: str) -> tuple[int, Any]:
    import nkeys

    key = nkeys.from_seed(nkeys.encode_seed(b"\x01" * 32, nkeys.PREFIX_BYTE_USER))
    async with api.http.post(
        api.base + "/v1/credentials",
        json={"public_key": key.public_key.decode()},
        headers={"Authorization": f"Bearer {token}"},
    ) as response:
        return response.status, await response.json()
