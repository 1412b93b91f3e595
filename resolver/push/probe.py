"""Read-only questions to every nats-server over the system account (DESIGN.md §2).

- ``$SYS.REQ.SERVER.PING``: which servers are there (each answers);
- ``$SYS.REQ.ACCOUNT.<A>.INFO``: the account JWT a server holds, on every resolver type
  (URL, memory, full); an account not loaded there answers "... does not exist", and asking
  does not make the server load it (checked against nats-server 2.15.1);
- ``$SYS.REQ.SERVER.PING.VARZ``: each server's trusted operator claims, so a rotation can
  check that every server trusts the key it is about to promote.

Push replies cannot tell staleness: a URL-resolver server answers "jwt updated" whether it
held that JWT already or an older one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from resolver.config import Settings
from resolver.push.connection import SystemConnection

SERVER_PING = "$SYS.REQ.SERVER.PING"
SERVER_VARZ = "$SYS.REQ.SERVER.PING.VARZ"
ACCOUNT_INFO = "$SYS.REQ.ACCOUNT.{account}.INFO"


class Requester(Protocol):
    async def request_all(
        self, subject: str, payload: bytes, gather_for: float, *, expect: int | None = None
    ) -> list[bytes]: ...


@dataclass(frozen=True)
class HeldAccount:
    """What one server holds for one account."""

    server: str
    #: The account JWT it uses; None when the account is not loaded there (it fetches the
    #: current one over HTTP, or gets it pushed, when it is next needed).
    jwt: str | None
    #: Any other error the server answered with.
    error: str | None = None


def _parse(body: bytes) -> tuple[str, Any, str | None] | None:
    """(server name, data, error description) of a ``$SYS`` reply; None if it is none."""
    try:
        reply = json.loads(body)
    except ValueError:
        return None
    if not isinstance(reply, dict) or not isinstance(reply.get("server"), dict):
        return None
    server = reply["server"]
    name = str(server.get("name") or server.get("id") or "?")
    error = reply.get("error")
    described = str(error.get("description", "error")) if isinstance(error, dict) else None
    return name, reply.get("data"), described


class ServerProbe:
    """Asks every server; ``timeout`` bounds each question (a server that does not answer
    in time is simply absent from the answer)."""

    def __init__(self, requester: Requester, *, timeout: float) -> None:
        self._requester = requester
        self._timeout = timeout

    async def servers(self) -> list[str]:
        """Names of the servers that answer, waiting the whole timeout (nobody says how many
        there are)."""
        bodies = await self._requester.request_all(SERVER_PING, b"", self._timeout)
        return sorted({parsed[0] for body in bodies if (parsed := _parse(body)) is not None})

    async def held_jwts(self, account_key: str, *, expect: int | None = None) -> list[HeldAccount]:
        """Each answering server's JWT of ``account_key``; stops early once ``expect``
        servers answered."""
        bodies = await self._requester.request_all(
            ACCOUNT_INFO.format(account=account_key), b"", self._timeout, expect=expect
        )
        held: list[HeldAccount] = []
        for body in bodies:
            parsed = _parse(body)
            if parsed is None:
                continue
            server, data, error = parsed
            if error is not None:
                if "does not exist" in error:
                    held.append(HeldAccount(server, None))
                else:
                    held.append(HeldAccount(server, None, error=error))
            elif isinstance(data, dict) and isinstance(data.get("jwt"), str):
                held.append(HeldAccount(server, data["jwt"]))
        return held

    async def trusted_signing_keys(self) -> dict[str, set[str]]:
        """Server name → the operator keys (identity and signing keys) its configured
        operator JWT(s) make it trust."""
        bodies = await self._requester.request_all(SERVER_VARZ, b"{}", self._timeout)
        trusted: dict[str, set[str]] = {}
        for body in bodies:
            parsed = _parse(body)
            if parsed is None or not isinstance(parsed[1], dict):
                continue
            keys: set[str] = set()
            for claim in parsed[1].get("trusted_operators_claim") or []:
                if not isinstance(claim, dict):
                    continue
                keys.add(str(claim.get("sub", "")))
                nats = claim.get("nats") if isinstance(claim.get("nats"), dict) else {}
                keys.update(str(k) for k in nats.get("signing_keys") or [])
            trusted[parsed[0]] = keys
        return trusted


@contextlib.asynccontextmanager
async def probe_for(settings: Settings, *, wait: float = 3.0) -> AsyncIterator[ServerProbe | None]:
    """A probe on a connection of its own (for the command line), or None when NATS is off
    or does not answer within ``wait`` seconds."""
    if not settings.nats.enabled:
        yield None
        return
    up = asyncio.Event()
    connection = SystemConnection(
        settings.nats, settings.system_creds_path, on_connected=up.set, name="nats-iam-resolver-cli"
    )
    connection.start()
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(up.wait(), wait)
        yield (
            ServerProbe(connection, timeout=max(0.5, settings.nats.push_timeout))
            if connection.connected
            else None
        )
    finally:
        await connection.close()
