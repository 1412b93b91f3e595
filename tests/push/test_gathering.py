"""Gathering push replies stops once every server known to answer has answered.

Waiting out the whole deadline after the last expected reply would hold back the next push,
and the next push is often the next person's revocation.
"""

from __future__ import annotations

import time
from pathlib import Path

from resolver.config import NatsSettings
from resolver.db.models import Account
from resolver.push.connection import SystemConnection
from tests.push.conftest import wait_for
from tests.support.nats import NatsServer

#: Far longer than a loopback reply takes: only a wait for the deadline comes near it.
DEADLINE = 4.0


async def test_later_pushes_stop_gathering_when_every_known_server_answered(
    full_nats: NatsServer, sys_creds: Path, system_account: Account
) -> None:
    full_nats.start()
    settings = NatsSettings(servers=(full_nats.url,), system_creds=sys_creds)
    connection = SystemConnection(settings, sys_creds)
    connection.start()
    try:

        async def connected() -> bool:
            return connection.connected

        await wait_for(connected, what="the system connection")
        key, jwt = system_account.public_key, system_account.jwt or ""

        started = time.monotonic()
        first = await connection.push_claims(key, jwt, DEADLINE)
        first_took = time.monotonic() - started
        # Nobody is known yet: the first push waits for the deadline to learn who answers.
        assert first_took >= DEADLINE * 0.9
        assert {(r.server, r.subject.split(".")[2]) for r in first} == {
            ("n1", "ACCOUNT"),
            ("n1", "CLAIMS"),
        }

        started = time.monotonic()
        second = await connection.push_claims(key, jwt, DEADLINE)
        assert time.monotonic() - started < DEADLINE / 2
        assert len(second) == len(first) and all(r.code == 200 for r in second)
    finally:
        await connection.close()
