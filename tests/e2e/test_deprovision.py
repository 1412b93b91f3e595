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
from collections.abc import Awaitable, Callable

import nats
import pytest

from tests.e2e.conftest import (
    Service,
    connect,
    connected_alice,
    may_publish,
    patch,
    setup_orders,
)

pytestmark = pytest.mark.e2e

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
