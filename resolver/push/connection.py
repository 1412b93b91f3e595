"""The one long-lived NATS connection of the process, as a user of the system account.

nats-server only accepts claim updates from system-account users (DESIGN.md §2). The
connection is opened in a background task and reconnects forever, so a NATS outage never
blocks start-up: outbox rows simply stay pending until it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import MaxPayloadError

from resolver.config import NatsSettings
from resolver.errors import ConfigError

log = logging.getLogger(__name__)

#: Servers on the URL and memory resolvers listen here (request/reply) ...
ACCOUNT_UPDATE_SUBJECT = "$SYS.REQ.ACCOUNT.{account}.CLAIMS.UPDATE"
#: ... full and cache nats resolvers also answer here. Publishing on both reaches every kind.
CLAIMS_UPDATE_SUBJECT = "$SYS.REQ.CLAIMS.UPDATE"
#: Seconds between reconnect attempts to one server (nats-py's default is 2).
RECONNECT_WAIT = 1


class PushUnavailableError(Exception):
    """The push could not be sent (no connection, or it broke while sending)."""


class PushRejectedError(Exception):
    """The push can never be sent as it is (bigger than the servers' ``max_payload``)."""


@dataclass(frozen=True)
class ServerReply:
    """One server's answer to one claims update."""

    server: str
    server_id: str
    subject: str
    code: int
    message: str

    @property
    def result(self) -> str:
        """``updated``, ``skipped`` or ``error``: what the answer means for the account."""
        if self.code != 200:
            return "error"
        return "skipped" if "skipped" in self.message else "updated"

    def as_json(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "id": self.server_id,
            "subject": self.subject,
            "code": self.code,
            "result": self.result,
            "message": self.message,
        }


def parse_reply(subject: str, data: bytes) -> ServerReply | None:
    """A server's reply (``{"server":..,"data":..}`` or ``{"server":..,"error":..}``); None
    for anything else, such as the no-responders status of a subject nobody answers."""
    if not data:
        return None
    try:
        body = json.loads(data)
    except ValueError:
        return None
    if not isinstance(body, dict) or not isinstance(body.get("server"), dict):
        return None
    server = body["server"]
    outcome = body.get("error") if isinstance(body.get("error"), dict) else body.get("data")
    if not isinstance(outcome, dict):
        return None
    failed = "error" in body
    code = outcome.get("code")
    text = outcome.get("description") if failed else outcome.get("message")
    return ServerReply(
        server=str(server.get("name") or server.get("id") or "?"),
        server_id=str(server.get("id") or ""),
        subject=subject,
        code=int(code) if isinstance(code, int) else (500 if failed else 200),
        message=str(text or ""),
    )


def tls_context(settings: NatsSettings) -> ssl.SSLContext | None:
    """A client TLS context from ``nats.tls_*``; None lets nats-py use its defaults.

    Called when a connection is built, so a bad certificate path stops start-up with a
    ``ConfigError`` instead of failing every connect.
    """
    if settings.tls_ca is None and settings.tls_cert is None:
        return None
    try:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(settings.tls_ca) if settings.tls_ca else None
        )
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if settings.tls_cert is not None and settings.tls_key is not None:
            context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("nats.tls_ca", f"cannot load TLS files: {exc}") from None
    return context


class OutageLog:
    """nats-py's callbacks for a connection that reconnects forever, shared by the push,
    auth callout and connection audit connections: a problem is logged once per outage,
    not once per reconnect attempt. ``prefix`` names the connection in each line."""

    def __init__(
        self, prefix: str = "", *, on_reconnected: Callable[[], None] | None = None
    ) -> None:
        self._prefix = prefix
        self._on_reconnected = on_reconnected
        self.failing = False

    def connected(self) -> None:
        self.failing = False

    async def error(self, exc: Exception) -> None:
        # nats-py errors carry no secrets (the creds file is read, never echoed).
        if not self.failing:
            log.warning("%sNATS connection problem: %s", self._prefix, exc or type(exc).__name__)
        self.failing = True

    async def disconnected(self) -> None:
        log.warning("%sdisconnected from NATS; reconnecting", self._prefix)

    async def reconnected(self) -> None:
        self.failing = False
        log.info("%sreconnected to NATS", self._prefix)
        if self._on_reconnected is not None:
            self._on_reconnected()

    def connect_options(self) -> dict[str, Any]:
        """``Client.connect`` keywords: reconnect forever, these callbacks."""
        return {
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": RECONNECT_WAIT,
            "connect_timeout": 2,
            "error_cb": self.error,
            "disconnected_cb": self.disconnected,
            "reconnected_cb": self.reconnected,
        }


class SystemConnection:
    """nats-py client connected as the system user; ``push_claims`` sends one update."""

    def __init__(
        self,
        settings: NatsSettings,
        creds_path: Path,
        *,
        on_connected: Callable[[], None] | None = None,
        name: str = "nats-iam-resolver",
    ) -> None:
        self._settings = settings
        self._creds_path = creds_path
        self._on_connected = on_connected
        self._name = name
        self._tls = tls_context(settings)
        self._client: Client | None = None
        self._task: asyncio.Task[None] | None = None
        # (server id, subject) pairs that answered pushes before: once all of them have
        # answered a push, waiting longer only delays the next one (a removal behind it).
        self._answering: set[tuple[str, str]] = set()
        self._outage = OutageLog(on_reconnected=self._notify_connected)

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.is_connected

    @property
    def server_url(self) -> str | None:
        if self._client is None or not self._client.is_connected:
            return None
        url = self._client.connected_url
        return url.geturl() if url is not None else None

    def start(self) -> None:
        """Connect in the background; returns at once (start-up never waits for NATS)."""
        if self._task is None:
            self._task = asyncio.create_task(self._connect(), name="nats-system-connection")

    async def _connect(self) -> None:
        if not self._creds_path.exists():
            # nats-py would retry forever with a bare "file not found"; say what is missing.
            log.error(
                "NATS system user creds not found at %s: pushes stay queued", self._creds_path
            )
        client = Client()
        self._client = client
        try:
            await self._connect_forever(client)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Only a bug lands here (nats-py retries every connect failure itself); rows
            # stay pending and the admin view shows NATS as not connected.
            log.exception("NATS connection task failed")
            return
        self._outage.connected()
        log.info("connected to NATS at %s as the system user", self.server_url)
        self._notify_connected()

    async def _connect_forever(self, client: Client) -> None:
        await client.connect(
            servers=list(self._settings.servers),
            name=self._name,
            user_credentials=str(self._creds_path),
            tls=self._tls,
            **self._outage.connect_options(),
        )

    def _notify_connected(self) -> None:
        if self._on_connected is not None:
            self._on_connected()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.close()

    async def request_all(
        self, subject: str, payload: bytes, gather_for: float, *, expect: int | None = None
    ) -> list[bytes]:
        """Send a ``$SYS`` request every server answers; the bodies of the replies gathered
        for ``gather_for`` s at most, or until ``expect`` of them came. Read-only requests
        (``resolver.push.probe``): claim updates go through ``push_claims`` only."""
        client = self._client
        if client is None or not client.is_connected:
            raise PushUnavailableError("not connected to NATS")
        inbox = client.new_inbox()
        bodies: list[bytes] = []
        enough = asyncio.Event()

        async def collect(msg: Msg) -> None:
            bodies.append(msg.data)
            if expect is not None and len(bodies) >= expect:
                enough.set()

        try:
            sub = await client.subscribe(inbox, cb=collect)
            try:
                await client.publish(subject, payload, reply=inbox)
                await client.flush(timeout=max(1, int(gather_for + 0.999)))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(enough.wait(), gather_for)
            finally:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        except (NatsError, OSError, TimeoutError) as exc:
            raise PushUnavailableError(f"request failed: {type(exc).__name__}") from None
        return list(bodies)

    async def push_claims(self, account_key: str, jwt: str, gather_for: float) -> list[ServerReply]:
        """Send ``jwt`` on both update subjects; the replies, gathered for ``gather_for`` s at
        most, or until every server that answered earlier pushes has answered this one.

        ``nc.request`` returns only the first reply, but every server answers, so the
        request is a publish with a private inbox that collects replies. Stopping early
        changes nothing for the servers (each applies the update when it gets it); it only
        lets the next push (often the next revocation) go out at once. A server that joins
        is waited for from its first answer on; one that stops answering is forgotten after
        one full wait.
        """
        client = self._client
        if client is None or not client.is_connected:
            # Never hand a push to nats-py's reconnect buffer: it would be sent later,
            # outside the outbox's ordering, and we could not tell whether it arrived.
            raise PushUnavailableError("not connected to NATS")
        inbox = client.new_inbox()
        subjects = {
            f"{inbox}.a": ACCOUNT_UPDATE_SUBJECT.format(account=account_key),
            f"{inbox}.c": CLAIMS_UPDATE_SUBJECT,
        }
        replies: list[ServerReply] = []
        expected = set(self._answering)
        seen: set[tuple[str, str]] = set()
        everyone = asyncio.Event()

        async def collect(msg: Msg) -> None:
            reply = parse_reply(subjects.get(msg.subject, msg.subject), msg.data)
            if reply is not None:
                replies.append(reply)
                seen.add((reply.server_id, msg.subject[-1]))
                if expected and expected <= seen:
                    everyone.set()

        payload = jwt.encode("ascii")
        try:
            sub = await client.subscribe(f"{inbox}.*", cb=collect)
            try:
                for reply_to, subject in subjects.items():
                    await client.publish(subject, payload, reply=reply_to)
                await client.flush(timeout=max(1, int(gather_for + 0.999)))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(everyone.wait(), gather_for)
            finally:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            self._answering = seen
        except MaxPayloadError:
            raise PushRejectedError(
                f"the JWT ({len(payload)} bytes) exceeds the server's max_payload"
            ) from None
        except (NatsError, OSError, TimeoutError) as exc:
            raise PushUnavailableError(f"sending failed: {type(exc).__name__}") from None
        return replies
