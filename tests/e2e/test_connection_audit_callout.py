"""Connection audit of auth-callout clients, against a real nats-server 2.15.1.

A client that connects with nothing but an IdP token has no user key of its own in the
events: nats-server shows it under the ``name`` of the user JWT the callout answered with
(it replaces the connect's user with it). The row must name the person by that, and hold
neither the IdP token nor a JWT. The callout stack is tests/e2e/test_auth_callout.py's.
"""

from __future__ import annotations

import json

import pytest

from tests.e2e.test_auth_callout import Client, idp, stack, world
from tests.e2e.test_connection_audit import connection_rows, wait_recording
from tests.support.idp import IdpStandIn
from tests.support.stack import Api, Stack

pytestmark = pytest.mark.e2e

__all__ = ["idp", "stack"]  # the callout stack's fixtures, used here as they are


async def test_a_callout_client_is_recorded_under_the_name_the_callout_gave_it(
    api: Api, stack: Stack, idp: IdpStandIn
) -> None:
    await wait_recording(stack)
    person = await world(api, "CALLAUDIT")
    token = idp.token("00u-callaudit", email=person)
    client = await Client().connect(api.nats_url, token=token, name="callout-client")
    await client.close()

    connected, disconnected = await connection_rows(stack, "callout-client", 2)
    for row in (connected, disconnected):
        assert row.actor == person and row.user_name == person
        assert row.details["identity_source"] == "callout"
        assert row.details["account"] == "CALLAUDIT"
        text = json.dumps(row.details)
        assert token not in text and token.split(".")[1] not in text and "eyJ" not in text
    assert disconnected.details["reason"] == "Client Closed"
