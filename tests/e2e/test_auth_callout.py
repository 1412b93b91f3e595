"""Auth callout against a real nats-server: clients connect with nothing but an IdP token.

The stack is made as the README says: ``init --auth-callout`` (auth account with
``authorization`` {auth_users, allowed_accounts "*", xkey}, nats-server config with
``default_sentinel``), ``serve`` with an ``[[idp]]`` trusting a local IdP stand-in, and a
nats-server on ``nats-config``. Requests are therefore encrypted (xkey) both ways. Clients
use nats-py with ``token=`` (or ``user=``/``password=``) and no creds file.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import nats
import pytest

from tests.support.idp import IdpStandIn, make_key, running_idp
from tests.support.stack import Api, Stack, patch

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def idp() -> Iterator[IdpStandIn]:
    with running_idp("corp") as stand_in:
        yield stand_in


@pytest.fixture(scope="module")
def stack(idp: IdpStandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """``init --auth-callout``, the service trusting the stand-in (email = SCIM userName), a
    nats-server; returns once the callout subscription is up. The e2e ``api`` fixture talks
    to it."""
    stack = Stack.start(
        tmp_path_factory.mktemp("callout"),
        extra_config=idp.config(user_claim="email", user_attribute="userName"),
        init_args=("--auth-callout",),
    )
    try:
        deadline = time.monotonic() + 15
        while "auth callout answering" not in stack.service_output():
            assert time.monotonic() < deadline, stack.service_output()
            time.sleep(0.05)
        yield stack
    finally:
        stack.stop()


class Client:
    """A nats-py connection made with an IdP token, and what the server told it."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.lost = asyncio.Event()
        self.closed = asyncio.Event()
        self.nc: Any = None

    async def connect(self, url: str, *, reconnect: bool = False, **auth: Any) -> Client:
        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc).lower())

        async def on_disconnect() -> None:
            self.lost.set()

        async def on_closed() -> None:
            self.closed.set()

        self.nc = await nats.connect(
            url,
            allow_reconnect=reconnect,
            max_reconnect_attempts=3,
            reconnect_time_wait=0.05,
            connect_timeout=3,
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            closed_cb=on_closed,
            **auth,
        )
        return self

    async def close(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.close()


async def refused(url: str, **auth: Any) -> str:
    """A connect with these credentials is refused; the server's reason, lower case."""
    client = Client()
    with pytest.raises(nats.errors.Error) as caught:
        await client.connect(url, **auth)
    await client.close()
    return str(caught.value).lower() + " " + " ".join(client.errors)


async def world(api: Api, name: str) -> str:
    """Account ``name``, role ``<name>-rw`` on ``<name>.>``, group bound to it; its person."""
    lower = name.lower()
    person = f"{lower}-person@example.com"
    user = await api.user(person)
    await api.group(f"{name}-people", [user])
    await api.account(name)
    await api.role(f"{lower}-rw", publish=[f"{lower}.>"], subscribe=[f"{lower}.>"])
    await api.binding(name, f"{lower}-rw", group=f"{name}-people")
    return person


async def test_a_valid_token_connects_with_exactly_its_roles_permissions(
    api: Api, idp: IdpStandIn
) -> None:
    person = await world(api, "TRADE")
    # A workload is connected, so nats-server has TRADE loaded: the scoped key the callout
    # makes for the role reaches it only by a push, which the answer waits for.
    issued = await api.ok("POST", "/admin/v1/accounts/TRADE/users", {"name": "bot", "ttl": "1h"})
    workload = api.tmp / "bot.creds"
    workload.write_text(issued["creds"])
    workload.chmod(0o600)
    bot = await Client().connect(api.nats_url, user_credentials=str(workload))
    # A callable token: nats-py asks for a fresh one at every (re)connect.
    client = await Client().connect(api.nats_url, token=lambda: idp.token("00u-t", email=person))
    try:
        sub = await client.nc.subscribe("trade.orders")
        await client.nc.publish("trade.orders", b"buy")
        assert (await sub.next_msg(timeout=2)).data == b"buy"
        await client.nc.publish("payroll.run", b"nope")
        await client.nc.flush()
        deadline = time.monotonic() + 3
        while not any('publish to "payroll.run"' in e for e in client.errors):
            assert time.monotonic() < deadline, client.errors
            await asyncio.sleep(0.02)
    finally:
        await client.close()
        await bot.close()


async def test_the_password_carries_the_token_and_the_user_names_the_account(
    api: Api, idp: IdpStandIn
) -> None:
    person = await world(api, "LEDGER")
    token = idp.token("00u-l", email=person)
    client = await Client().connect(api.nats_url, user="LEDGER", password=token)
    try:
        sub = await client.nc.subscribe("ledger.entries")
        await client.nc.publish("ledger.entries", b"1")
        assert (await sub.next_msg(timeout=2)).data == b"1"
    finally:
        await client.close()
    reason = await refused(api.nats_url, user="TRADE", password=token)
    assert "authorization violation" in reason


async def test_expired_forged_unknown_and_missing_tokens_are_refused(
    api: Api, idp: IdpStandIn
) -> None:
    person = await world(api, "VAULT")
    cases = {
        "expired": idp.token("00u-v", email=person, ttl=-600),
        # Signed by a key the IdP never published.
        "forged": idp.token("00u-v", email=person, key=make_key()),
        "unknown user": idp.token("00u-x", email="nobody@example.com"),
        "not a JWT": "hunter2",
    }
    for case, token in cases.items():
        reason = await refused(api.nats_url, token=token)
        assert "authorization violation" in reason, (case, reason)
    # No credentials at all: the default sentinel sends it to the callout, which refuses.
    assert "authorization violation" in await refused(api.nats_url)


async def test_servers_without_default_sentinel_take_the_sentinel_creds_and_the_token(
    api: Api, stack: Stack, idp: IdpStandIn
) -> None:
    """What a client of nats-server 2.10 does: present the sentinel creds init wrote."""
    person = await world(api, "OLDSERVER")
    sentinel = stack.data / "sentinel.creds"
    assert sentinel.stat().st_mode & 0o777 == 0o600
    token = idp.token("00u-o", email=person)
    client = await Client().connect(api.nats_url, user_credentials=str(sentinel), token=token)
    try:
        sub = await client.nc.subscribe("oldserver.x")
        await client.nc.publish("oldserver.x", b"1")
        assert (await sub.next_msg(timeout=2)).data == b"1"
    finally:
        await client.close()
    # The sentinel alone gets nothing: it is a deny-all user sent to the callout.
    assert "authorization violation" in await refused(api.nats_url, user_credentials=str(sentinel))


async def test_a_deactivated_user_is_dropped_and_refused(api: Api, idp: IdpStandIn) -> None:
    person = await world(api, "PAYROLL")
    other = "payroll-colleague@example.com"
    colleague_id = await api.user(other)
    group = await _group_id(api, "PAYROLL-people")
    await api.scim(
        "PATCH",
        f"/Groups/{group}",
        patch({"op": "add", "path": "members", "value": [{"value": colleague_id}]}),
    )
    token = idp.token("00u-p", email=person)
    alice = await Client().connect(api.nats_url, reconnect=True, token=token)
    bob = await Client().connect(api.nats_url, token=idp.token("00u-b", email=other))
    try:
        user_id = await _user_id(api, person)
        await api.scim(
            "PATCH", f"/Users/{user_id}", patch({"op": "replace", "path": "active", "value": False})
        )
        await asyncio.wait_for(alice.lost.wait(), 5)
        await asyncio.wait_for(alice.closed.wait(), 5)  # her reconnects are refused too
        # Closed by the revocation push (nats-server remembers the callout's user nkey and iat).
        last = str(alice.nc.last_error).lower()
        assert "user authentication revoked" in last, (last, alice.errors)
        assert "authorization violation" in await refused(api.nats_url, token=token)
        # The colleague in the same group keeps the connection.
        assert bob.nc.is_connected
        await bob.nc.flush(timeout=2)
    finally:
        await alice.close()
        await bob.close()


async def _user_id(api: Api, user_name: str) -> str:
    found = await api.scim("GET", f'/Users?filter=userName eq "{user_name}"')
    return found["Resources"][0]["id"]


async def _group_id(api: Api, name: str) -> str:
    found = await api.scim("GET", f'/Groups?filter=displayName eq "{name}"')
    return found["Resources"][0]["id"]
