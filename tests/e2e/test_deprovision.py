"""Live deprovisioning, end to end: an IdP change over SCIM (or an admin's deletion) →
revocation → account JWT pushed → nats-server drops the live connection.

One stack per module (``nats-iam-resolver serve`` and a nats-server on its
``resolver: URL(...)``, see tests/support/stack.py), on SQLite and on PostgreSQL; every case
makes its own account, role, users and groups. In each, alice and bob are in group ``eng``,
bound to the case's account with a role that allows ``orders.>``; alice gets person
credentials from the admin API, connects (with reconnect on), may publish on ``orders.new``
and is refused on ``billing.new``. Then each way of losing access, separately, must close
her live connection (the server says the credentials were revoked), leave her client unable
to reconnect, refuse a fresh connect with the same creds, and name her key, and only hers,
in the account's revocations. Deleting the account drops everyone in it. Losing one of two
groups bound to the account must do none of that.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.stack import (
    Api,
    Person,
    connect,
    may_publish,
    patch,
    refused_connect,
    refused_publish,
)

pytestmark = pytest.mark.e2e

_serial = itertools.count(1)


@dataclass
class Case:
    tag: str
    account: str
    alice: str
    bob: str
    carol: str
    eng: str
    binding: int
    ops: str | None = None


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def creds_user_key(creds: Path) -> str:
    token = creds.read_text().split("-----BEGIN NATS USER JWT-----")[1].split("------END")[0]
    return claims(token.strip())["sub"]


async def revocations(api: Api, account: str) -> dict[str, int]:
    """``nats.revocations`` of the account JWT the service serves to nats-server."""
    key = (await api.get_account(account))["public_key"]
    async with api.http.get(f"{api.base}/jwt/v1/accounts/{key}") as response:
        assert response.status == 200
        token = (await response.text()).strip()
    return claims(token)["nats"].get("revocations", {})


async def setup(api: Api, *, second_group: bool = False) -> Case:
    """Account, role, alice and bob in ``eng`` bound to the account (alice also in ``ops``,
    bound to it too, when ``second_group``), carol in no group."""
    tag = f"c{next(_serial)}"
    account = f"orders-{tag}"
    role = f"writer-{tag}"
    await api.account(account)
    await api.role(role, publish=["orders.>"], subscribe=["orders.>"])
    alice = await api.user(f"alice.{tag}")
    bob = await api.user(f"bob.{tag}")
    carol = await api.user(f"carol.{tag}")
    eng = await api.group(f"eng-{tag}", [alice, bob])
    binding = await api.binding(account, role, group=f"eng-{tag}")
    case = Case(tag, account, alice, bob, carol, eng, binding)
    if second_group:
        case.ops = await api.group(f"ops-{tag}", [alice])
        await api.binding(account, role, group_id=case.ops)
    return case


async def connected(api: Api, case: Case, who: str) -> Person:
    """``who`` (alice or bob) connected with fresh person credentials, allowed and denied as
    the role says, and still connected (a denied publish is an error, not a disconnect)."""
    person = await connect(api, await api.creds(f"{who}.{case.tag}", case.account), reconnect=True)
    await may_publish(person, f"orders.{who}")
    await refused_publish(person, f"billing.{who}")
    assert person.nc.is_connected
    return person


async def cut_off(api: Api, person: Person) -> None:
    """The live connection was closed for revocation, the client's reconnect got nowhere,
    and a fresh connect with the same creds is refused."""
    async with asyncio.timeout(10):
        await person.lost.wait()
        await person.closed.wait()
    assert "revoked" in str(person.nc.last_error).lower(), (person.nc.last_error, person.errors)
    assert not person.reconnected.is_set()
    reason = await refused_connect(api.nats_url, person.creds)
    assert "authorization violation" in reason, reason


# -- the ways of losing access ---------------------------------------------------------

Removal = Callable[[Api, Case], Awaitable[None]]


async def entra_filter_removal(api: Api, case: Case) -> None:
    op = {"op": "Remove", "path": f'members[value eq "{case.alice}"]'}
    await api.scim("PATCH", f"/Groups/{case.eng}", patch(op))


async def entra_legacy_removal(api: Api, case: Case) -> None:
    op = {"op": "Remove", "path": "members", "value": [{"value": case.alice}]}
    await api.scim("PATCH", f"/Groups/{case.eng}", patch(op))


async def okta_removal(api: Api, case: Case) -> None:
    # Okta repeats replace {id, displayName} on every membership update, then sends the
    # removal and an addition in one PATCH (tests/scim/test_idp_okta.py).
    name = {"op": "replace", "value": {"id": case.eng, "displayName": f"eng-{case.tag}"}}
    await api.scim("PATCH", f"/Groups/{case.eng}", patch(name))
    swap = patch(
        {"op": "remove", "path": f'members[value eq "{case.alice}"]'},
        {"op": "add", "path": "members", "value": [{"value": case.carol, "display": "carol"}]},
    )
    await api.scim("PATCH", f"/Groups/{case.eng}", swap)


async def entra_deactivation(api: Api, case: Case) -> None:
    op = {"op": "Replace", "path": "active", "value": "False"}
    await api.scim("PATCH", f"/Users/{case.alice}", patch(op))


async def okta_deactivation(api: Api, case: Case) -> None:
    op = {"op": "replace", "value": {"active": False}}
    await api.scim("PATCH", f"/Users/{case.alice}", patch(op))


async def user_deletion(api: Api, case: Case) -> None:
    await api.scim("DELETE", f"/Users/{case.alice}")


async def binding_deletion(api: Api, case: Case) -> None:
    await api.ok("DELETE", f"/admin/v1/bindings/{case.binding}")


async def group_deletion(api: Api, case: Case) -> None:
    await api.scim("DELETE", f"/Groups/{case.eng}")


#: These take the whole group's access (bob's too); the others only alice's.
WHOLE_GROUP = {binding_deletion, group_deletion}


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
async def test_losing_access_closes_the_live_connection(api: Api, removal: Removal) -> None:
    case = await setup(api)
    alice = await connected(api, case, "alice")
    bob = await connected(api, case, "bob")
    before = await api.pushed(case.account)

    started = time.perf_counter()
    await removal(api, case)
    answered = time.perf_counter()
    await cut_off(api, alice)
    print(
        f"\n[{removal.__name__}] request {(answered - started) * 1000:.1f} ms, "
        f"response -> disconnect {(alice.lost_at[0] - answered) * 1000:.1f} ms"
    )

    # The server that had the account loaded applied the new JWT (one re-sign, acked).
    after = await api.pushed(case.account)
    assert after["jti"] != before["jti"] and after["result"] == "updated", after
    revoked = await revocations(api, case.account)
    assert creds_user_key(alice.creds) in revoked
    if removal in WHOLE_GROUP:
        assert creds_user_key(bob.creds) in revoked
        await cut_off(api, bob)
    else:
        # Only alice was cut: bob, in the same group, keeps working.
        assert creds_user_key(bob.creds) not in revoked
        assert bob.nc.is_connected and not bob.lost.is_set()
        await may_publish(bob, "orders.still")


async def test_deleting_the_account_drops_everyone_in_it(api: Api) -> None:
    case = await setup(api)
    people = [await connected(api, case, who) for who in ("alice", "bob")]
    key = (await api.get_account(case.account))["public_key"]

    await api.ok("DELETE", f"/admin/v1/accounts/{case.account}")
    for person in people:
        async with asyncio.timeout(10):
            await person.lost.wait()
            await person.closed.wait()
        assert not person.reconnected.is_set()
        # Locked out with zero connections: the server knows the account and refuses.
        await refused_connect(api.nats_url, person.creds)
    async with api.http.get(f"{api.base}/jwt/v1/accounts/{key}") as response:
        assert response.status == 404


async def test_losing_one_of_two_bound_groups_keeps_the_connection(api: Api) -> None:
    case = await setup(api, second_group=True)
    alice = await connected(api, case, "alice")
    key = creds_user_key(alice.creds)

    await entra_filter_removal(api, case)  # out of eng, still in ops (same account)
    # Whatever the service pushed for this change has been acknowledged by nats-server ...
    await api.pushed(case.account)
    assert key not in await revocations(api, case.account)
    # ... and a while later alice is still connected and still allowed.
    await asyncio.sleep(0.5)
    assert alice.nc.is_connected and not alice.lost.is_set(), alice.nc.last_error
    await may_publish(alice, "orders.still")
    await refused_publish(alice, "billing.still")

    # Leaving the second group too is the end of it (the case above could have failed).
    op = {"op": "Remove", "path": f'members[value eq "{case.alice}"]'}
    await api.scim("PATCH", f"/Groups/{case.ops}", patch(op))
    await cut_off(api, alice)
    assert key in await revocations(api, case.account)
