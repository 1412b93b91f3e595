"""The auth callout's lifecycle: a NATS connection as the auth account's service user.

When ``[auth_callout] enabled``, the service connects as the user named in the auth
account's ``authorization.auth_users`` (its JWT minted from the sealed seed at start-up, see
``callout_keys``), subscribes to ``$SYS.REQ.USER.AUTH`` in a queue group (so N replicas
share the requests, each answered once) and answers each request in a task of its own, with
its own transaction. Like the push connection it connects in the background and reconnects
forever: start-up never waits for NATS, and while it is away nats-server refuses callout
clients (no answer within its auth timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping

from aiohttp import web
from nats.aio.client import Client, RawCredentials
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from resolver.appkeys import CREDENTIAL_ISSUER, IDENTITY_VERIFIER, SEALER, SESSIONMAKER, SETTINGS
from resolver.credentials.callout import (
    AUTH_CALLOUT_SUBJECT,
    AuthRequest,
    CalloutRefusedError,
    CalloutRequestError,
    CalloutResponder,
    decide,
    identify,
    record_refusal,
)
from resolver.credentials.callout_keys import load_callout_keys, service_user_jwt
from resolver.credentials.exchange import IssuedCredentials
from resolver.credentials.identity import IdentityVerifier
from resolver.http.pushing import wait_pushed, wake_pusher
from resolver.logs import request_id_var
from resolver.natsjwt import format_creds
from resolver.push.connection import OutageLog, tls_context

log = logging.getLogger("resolver.credentials.callout")

#: Every replica subscribes in this group: nats-server hands each request to one of them.
QUEUE_GROUP = "nats-iam-resolver-callout"
#: Requests decided at once; more wait their turn (each holds a database connection).
MAX_IN_FLIGHT = 32
#: How long stopping waits for requests being answered.
STOP_GRACE_SECONDS = 3.0
#: Longest wait for the push of a new scoped key before answering anyway.
PUSH_WAIT_CAP_SECONDS = 2.0
#: Said to the server when something unexpected failed (details only in our log).
INTERNAL_ERROR = "internal error in the auth callout service"
#: A request that waited longer than this for its turn is refused without a decision:
#: past half the server's 2 s auth timeout the answer would likely come too late to be
#: read, and deciding it anyway takes the turn of requests that could still be answered.
SHED_AFTER_SECONDS = 1.0
OVERLOADED = "the auth callout service is overloaded; try again"
#: Refusals for overload are logged as a count at most this often.
SHED_REPORT_SECONDS = 10.0


class _TooLate(Exception):
    """The server's auth timeout passed before the request was decided."""


class CalloutService:
    """Answers nats-server's authorization requests until stopped."""

    def __init__(self, app: web.Application, responder: CalloutResponder) -> None:
        self._app = app
        self._responder = responder
        settings = app[SETTINGS]
        self._tls = tls_context(settings.nats)
        self._client = Client()
        self._task: asyncio.Task[None] | None = None
        self._subscription: Subscription | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._outage = OutageLog("auth callout ")
        self._shed = 0
        self._shed_reported = 0.0

    @property
    def connected(self) -> bool:
        return self._client.is_connected

    def start(self) -> None:
        """Connect and subscribe in the background; returns at once."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="nats-auth-callout")

    async def _run(self) -> None:
        app, keys = self._app, self._responder.keys
        settings, sealer = app[SETTINGS], app[SEALER]
        # In memory only, for nats-py to sign each connect's nonce; never written anywhere.
        creds = RawCredentials(
            format_creds(service_user_jwt(keys, sealer), sealer.open(keys.user_seed_sealed))
        )
        try:
            await self._client.connect(
                servers=list(settings.nats.servers),
                name="nats-iam-resolver auth callout",
                user_credentials=creds,
                tls=self._tls,
                **self._outage.connect_options(),
            )
            self._subscription = await self._client.subscribe(
                AUTH_CALLOUT_SUBJECT, queue=QUEUE_GROUP, cb=self._on_request
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("auth callout connection failed; callout clients are refused")
            return
        self._outage.connected()
        log.info(
            "auth callout answering %s in account %s (%s)",
            AUTH_CALLOUT_SUBJECT,
            keys.account_name,
            keys.account_public_key,
        )

    async def _on_request(self, msg: Msg) -> None:
        # nats-py runs a subscription's callbacks one after another: hand each request to a
        # task of its own, so one slow decision (a JWKS fetch, a push wait) delays no other.
        task = asyncio.create_task(self._handle(msg, time.monotonic()))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _handle(self, msg: Msg, received: float) -> None:
        async with self._slots:
            answer = await self.answer(msg.data, msg.headers, waited=time.monotonic() - received)
        if answer is None or not msg.reply:
            return
        try:
            # Not msg.respond(): that would echo the request's headers back.
            await self._client.publish(msg.reply, answer)
        except Exception as exc:  # the connection broke meanwhile; the server times out
            log.warning("could not send the auth callout answer: %s", type(exc).__name__)

    async def answer(
        self, data: bytes, headers: Mapping[str, str] | None, *, waited: float = 0.0
    ) -> bytes | None:
        """The answer to one request (``waited``: seconds it queued for its turn); None
        when it cannot be answered at all."""
        # Every log line and audit row of this request carries its id.
        token = request_id_var.set(f"callout-{uuid.uuid4().hex[:16]}")
        try:
            return await self._answer(data, headers, waited)
        finally:
            request_id_var.reset(token)

    async def _answer(
        self, data: bytes, headers: Mapping[str, str] | None, waited: float
    ) -> bytes | None:
        responder = self._responder
        try:
            request = responder.read(data, headers)
        except CalloutRequestError as exc:
            log.warning("ignored an auth callout request: %s", exc)
            return None
        if waited > SHED_AFTER_SECONDS:
            # Not a decision about anyone, so no audit row (whose write would cost the
            # very time that is short); a count in the log instead.
            self._count_shed()
            return responder.refuse(request, OVERLOADED)
        try:
            issued = await self._decide_in_time(request, waited)
        except _TooLate:
            # The server has given up on this client (and refused it): no decision to
            # audit. Had it not reached the issuer's transaction yet, nothing was issued.
            self._count_shed()
            return responder.refuse(request, OVERLOADED)
        except CalloutRefusedError as refusal:
            await self._audit_refusal(request, refusal)
            log.info(
                "callout refused client %s from %s: %s",
                request.client_id,
                request.client_host,
                refusal.reason,
            )
            return responder.refuse(request, refusal.reason)
        except Exception:
            log.exception("auth callout failed for client %s", request.client_id)
            await self._audit_refusal(request, CalloutRefusedError(INTERNAL_ERROR))
            return responder.refuse(request, INTERNAL_ERROR)
        if issued.new_signing_key:
            # A server with the account loaded knows the new scoped key only once pushed;
            # answering before would have it refuse the JWT ("issuer is not known").
            wake_pusher(self._app)
            # Never past the request's exp (now + the server's auth timeout): an answer
            # after it is thrown away, one a little early may still find the key there.
            left = request.expires_at - time.time() if request.expires_at else PUSH_WAIT_CAP_SECONDS
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.1, min(left, PUSH_WAIT_CAP_SECONDS))):
                    await wait_pushed(self._app, issued.account_public_key, issued.account_jti)
        return responder.allow(request, issued.jwt)

    async def _decide_in_time(self, request: AuthRequest, waited: float) -> IssuedCredentials:
        """``_decide``, given up once the server no longer waits for the answer: a request
        that queued behind a slow batch must not get a key issued and audited for a client
        the server already turned away."""
        if request.answer_within is None:
            return await self._decide(request)
        deadline = asyncio.timeout(request.answer_within - waited)
        try:
            async with deadline:
                return await self._decide(request)
        except TimeoutError:
            if deadline.expired():
                raise _TooLate from None
            raise  # a timeout of something inside: an error like any other

    async def _decide(self, request: AuthRequest) -> IssuedCredentials:
        app = self._app
        verifier: IdentityVerifier = app[IDENTITY_VERIFIER]
        identity = await identify(verifier, request)
        return await decide(
            app[CREDENTIAL_ISSUER], identity, request, request_id=request_id_var.get()
        )

    def _count_shed(self) -> None:
        self._shed += 1
        now = time.monotonic()
        if now - self._shed_reported >= SHED_REPORT_SECONDS:
            log.warning(
                "auth callout overloaded: refused %d request(s) that waited over %.1f s "
                "or could not be decided before the server's auth timeout",
                self._shed,
                SHED_AFTER_SECONDS,
            )
            self._shed, self._shed_reported = 0, now

    async def _audit_refusal(self, request: AuthRequest, refusal: CalloutRefusedError) -> None:
        try:
            async with self._app[SESSIONMAKER]() as session, session.begin():
                await record_refusal(session, request, refusal, request_id=request_id_var.get())
        except Exception:
            # The client is refused either way; a lost audit row must not become a timeout.
            log.exception("could not audit a refused callout")

    async def stop(self) -> None:
        """Stop taking requests, let those under way finish (briefly), close."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        if self._subscription is not None:
            # Other replicas in the queue group get the next requests.
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=STOP_GRACE_SECONDS)
            for task in set(self._in_flight):
                task.cancel()
        with contextlib.suppress(Exception):
            await self._client.close()


async def callout_ctx(app: web.Application) -> AsyncIterator[None]:
    """The callout connection, after the database and the push connection; stopped first."""
    settings = app[SETTINGS]
    if not settings.auth_callout.enabled or not settings.nats.enabled:
        yield
        return
    async with app[SESSIONMAKER]() as session:
        # No auth account: stop start-up with one line naming the fix.
        keys = await load_callout_keys(session, settings)
    service = CalloutService(app, CalloutResponder(keys, app[SEALER]))
    service.start()
    try:
        yield
    finally:
        await service.stop()


def setup_callout(app: web.Application) -> None:
    """Register the callout (call after ``credentials.setup``, which builds the verifier)."""
    if IDENTITY_VERIFIER not in app:
        app[IDENTITY_VERIFIER] = IdentityVerifier(app[SETTINGS])
    app.cleanup_ctx.append(callout_ctx)
