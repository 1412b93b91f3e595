"""Subscribes to nats-server's connection events and writes them, batched, as audit rows.

A NATS connection of its own, as a system-account user (the only kind that may subscribe
to ``$SYS.ACCOUNT.>``), connected in the background and reconnecting forever like the push
connection: start-up never waits for NATS. nats-py sends its subscriptions again on every
reconnect, queue groups included, so they survive a NATS outage (events published while
no replica was connected are lost: nats-server does not keep them).

Several replicas: the connect/disconnect subscriptions are in one queue group, so
nats-server hands each event to exactly one replica and it is recorded once. The per
account connection counts (``$SYS.ACCOUNT.*.SERVER.CONNS``) are subscribed without a
group: every replica needs all of them for its gauge (see ``ConnectionCounts``).

Bursts: a reconnect storm brings thousands of events a second. The callback only parses
and buffers; a flusher writes what gathered in one transaction every ``FLUSH_SECONDS`` or
every ``BATCH_ROWS`` rows, whichever comes first. The buffer is bounded: past
``MAX_BUFFERED`` events (the database is down or slower than the storm) new events are
dropped and counted (``nir_nats_connection_events_dropped_total``), never held in memory
without limit.

No aiohttp here: resolver.audit.connections_ctx starts and stops it with the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from nats.aio.client import Client
from nats.aio.msg import Msg
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from resolver import metrics
from resolver.audit.connections import (
    CONNECT_SUBJECT,
    DISCONNECT_SUBJECT,
    ConnectionEvent,
    parse_connection_event,
    record_connection_events,
)
from resolver.config import NatsSettings
from resolver.push.connection import OutageLog, tls_context

log = logging.getLogger(__name__)

#: Every replica subscribes in this group: nats-server delivers each event to one of them.
QUEUE_GROUP = "nats-iam-resolver-audit"
#: Per server and account connection counts, sent on every change and every 30 s.
CONNS_SUBJECT = "$SYS.ACCOUNT.*.SERVER.CONNS"
CONNS_TYPE = "io.nats.server.advisory.v1.account_connections"

#: A burst is written at most this long after its first event ...
FLUSH_SECONDS = 0.1
#: ... or as soon as this many events wait (one transaction, one INSERT each).
BATCH_ROWS = 500
#: Events held at most while the database lags; more are dropped (and counted).
MAX_BUFFERED = 20_000
#: A batch the database refused is tried this many times in all, this far apart.
WRITE_ATTEMPTS = 3
RETRY_SECONDS = 1.0
#: How long stopping waits for the last batch to be written.
STOP_FLUSH_SECONDS = 5.0
#: nats-server repeats an account's count every 30 s while it has connections: a server
#: silent for three of those has gone away (its clients with it).
COUNTS_STALE_SECONDS = 90.0
COUNTS_PRUNE_SECONDS = 15.0


class EventBuffer:
    """Events waiting to be written: first in, first out, at most ``limit`` of them."""

    def __init__(self, limit: int = MAX_BUFFERED) -> None:
        self._limit = limit
        self._events: deque[ConnectionEvent] = deque()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._events)

    @property
    def limit(self) -> int:
        return self._limit

    def add(self, event: ConnectionEvent) -> bool:
        """Queue ``event``; False (and counted) when the buffer is full."""
        if len(self._events) >= self._limit:
            self.dropped += 1
            metrics.NATS_CONNECTION_EVENTS_DROPPED.labels("overflow").inc()
            return False
        self._events.append(event)
        return True

    def take(self, count: int) -> list[ConnectionEvent]:
        """The ``count`` oldest events, removed."""
        count = min(count, len(self._events))
        return [self._events.popleft() for _ in range(count)]

    def put_back(self, events: list[ConnectionEvent]) -> int:
        """Return events whose write failed to the front, as many as fit; how many did not."""
        room = max(0, self._limit - len(self._events))
        kept = events[:room]
        self._events.extendleft(reversed(kept))
        lost = len(events) - len(kept)
        if lost:
            self.dropped += lost
            metrics.NATS_CONNECTION_EVENTS_DROPPED.labels("overflow").inc(lost)
        return lost


class ConnectionCounts:
    """Client connections per account, summed over the servers, from the servers' own
    counts (``AccountNumConns``): the ``nir_nats_client_connections`` gauge.

    Counting connects minus disconnects would be wrong with a queue group (a connect seen
    by one replica, its disconnect by another) and after any missed event; the servers'
    counts are right whichever replica reads them, and every replica reads them all, so
    each shows the same number (aggregate replicas with ``max``, not ``sum``).
    """

    def __init__(
        self,
        *,
        stale_after: float = COUNTS_STALE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stale_after = stale_after
        self._clock = clock
        # account key -> server id -> (connections, when reported)
        self._by_account: dict[str, dict[str, tuple[int, float]]] = {}
        self._labels: dict[str, str] = {}

    def update(self, data: bytes) -> bool:
        """Take one ``$SYS.ACCOUNT.<A>.SERVER.CONNS`` message; False if it is not one."""
        try:
            body = json.loads(data)
        except ValueError:
            return False
        if not isinstance(body, dict) or body.get("type") != CONNS_TYPE:
            return False
        account, conns = body.get("acc"), body.get("conns")
        server = body.get("server") if isinstance(body.get("server"), dict) else {}
        server_id = server.get("id")
        if not isinstance(account, str) or not account or not isinstance(server_id, str):
            return False
        if not isinstance(conns, int) or isinstance(conns, bool) or conns < 0:
            return False
        name = body.get("name")
        label = name[:200] if isinstance(name, str) and name else account
        self._by_account.setdefault(account, {})[server_id] = (conns, self._clock())
        self._publish(account, label)
        return True

    def total(self, account: str) -> int:
        return sum(conns for conns, _ in self._by_account.get(account, {}).values())

    def prune(self) -> None:
        """Forget the counts of servers that stopped reporting (dead or unreachable)."""
        oldest = self._clock() - self._stale_after
        for account in list(self._by_account):
            servers = self._by_account[account]
            for server_id in [s for s, (_, at) in servers.items() if at < oldest]:
                del servers[server_id]
            self._publish(account, self._labels.get(account, account))

    def _publish(self, account: str, label: str) -> None:
        previous = self._labels.get(account)
        if previous is not None and previous != label:
            # The account was renamed: its old series would stay at its last value.
            with contextlib.suppress(KeyError):
                metrics.NATS_CLIENT_CONNECTIONS.remove(previous)
        total = self.total(account)
        if total == 0:
            # Idle accounts leave the metric (and the table): it lists what is connected.
            self._by_account.pop(account, None)
            self._labels.pop(account, None)
            with contextlib.suppress(KeyError):
                metrics.NATS_CLIENT_CONNECTIONS.remove(label)
            return
        self._labels[account] = label
        metrics.NATS_CLIENT_CONNECTIONS.labels(label).set(total)


class ConnectionRecorder:
    """The subscription, the buffer and the flusher; ``start`` and ``stop`` with the app."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        settings: NatsSettings,
        creds_path: Path,
        *,
        flush_seconds: float = FLUSH_SECONDS,
        batch_rows: int = BATCH_ROWS,
        max_buffered: int = MAX_BUFFERED,
        retry_seconds: float = RETRY_SECONDS,
    ) -> None:
        self._sessions = sessions
        self._settings = settings
        self._creds_path = creds_path
        self._flush_seconds = flush_seconds
        self._batch_rows = batch_rows
        self._retry_seconds = retry_seconds
        self._tls = tls_context(settings)
        self.buffer = EventBuffer(max_buffered)
        self.counts = ConnectionCounts()
        self._client = Client()
        self._waiting = asyncio.Event()  # the buffer holds something
        self._full = asyncio.Event()  # the buffer holds a batch
        self._tasks: list[asyncio.Task[None]] = []
        self._flushing: asyncio.Future[int] | None = None
        self._outage = OutageLog("connection audit ")
        self._write_failing = False  # the database
        self._dropped_reported = 0
        self.subscribed = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self._client.is_connected

    def start(self) -> None:
        """Connect, subscribe and flush in the background; returns at once."""
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._run(), name="nats-connection-audit"),
                asyncio.create_task(self._flush_forever(), name="nats-connection-audit-flush"),
                asyncio.create_task(self._prune_forever(), name="nats-connection-counts-prune"),
            ]

    async def _run(self) -> None:
        if not self._creds_path.exists():
            # nats-py would retry forever with a bare "file not found"; say what is missing.
            log.error(
                "NATS system user creds not found at %s: connections go unrecorded",
                self._creds_path,
            )
        try:
            await self._client.connect(
                servers=list(self._settings.servers),
                name="nats-iam-resolver connection audit",
                user_credentials=str(self._creds_path),
                tls=self._tls,
                **self._outage.connect_options(),
            )
            for subject in (CONNECT_SUBJECT, DISCONNECT_SUBJECT):
                await self._client.subscribe(subject, queue=QUEUE_GROUP, cb=self._on_event)
            await self._client.subscribe(CONNS_SUBJECT, cb=self._on_counts)
        except asyncio.CancelledError:
            raise
        except Exception:
            # nats-py retries connect failures itself: only a bug (or a refused
            # subscription) lands here. The service runs on; connections go unrecorded.
            log.exception("connection audit: subscribing to nats-server's events failed")
            return
        with contextlib.suppress(Exception):
            # The server has the subscriptions once this returns (if the connection broke
            # meanwhile, nats-py sends them again on reconnect).
            await self._client.flush(timeout=2)
        self._outage.connected()
        self.subscribed.set()
        log.info("connection audit subscribed to %s and %s", CONNECT_SUBJECT, DISCONNECT_SUBJECT)

    async def _on_event(self, msg: Msg) -> None:
        self.accept(msg.data)

    async def _on_counts(self, msg: Msg) -> None:
        self.counts.update(msg.data)

    def accept(self, data: bytes) -> ConnectionEvent | None:
        """Parse, count and buffer one event (no I/O: the flusher writes it)."""
        event = parse_connection_event(data)
        if event is None:
            return None
        metrics.NATS_CONNECTIONS_SEEN.labels(event.account_label, event.event).inc()
        if self.buffer.add(event):
            self._waiting.set()
            if len(self.buffer) >= self._batch_rows:
                self._full.set()
        return event

    async def _flush_forever(self) -> None:
        while True:
            await self._waiting.wait()
            if len(self.buffer) < self._batch_rows:
                # Let the burst gather: what arrives meanwhile shares the transaction.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self._flush_seconds)
            # Shielded: stopping must not cancel a commit under way (it could not tell
            # whether the batch was written, and would write it again or lose it).
            self._flushing = asyncio.ensure_future(self.flush())
            await asyncio.shield(self._flushing)

    async def _prune_forever(self) -> None:
        # On a timer, not on messages: when every server is gone no message comes at all.
        while True:
            await asyncio.sleep(COUNTS_PRUNE_SECONDS)
            self.counts.prune()

    async def flush(self, *, attempts: int = WRITE_ATTEMPTS) -> int:
        """Write everything buffered, batch by batch; how many events were taken (written,
        or dropped after ``attempts`` refusals)."""
        written = 0
        while len(self.buffer):
            batch = self.buffer.take(self._batch_rows)
            await self._write(batch, attempts)
            written += len(batch)
        if not len(self.buffer):
            self._waiting.clear()
        if len(self.buffer) < self._batch_rows:
            self._full.clear()
        self._report_dropped()
        return written

    async def _write(self, batch: list[ConnectionEvent], attempts: int) -> None:
        for attempt in range(1, attempts + 1):
            try:
                async with self._sessions() as session, session.begin():
                    await record_connection_events(session, batch)
            except asyncio.CancelledError:
                self.buffer.put_back(batch)
                raise
            except Exception as exc:
                if not self._write_failing:
                    # The type only: a driver's message may quote the row (client names).
                    log.warning(
                        "connection audit: writing %d event(s) failed (%s); retrying",
                        len(batch),
                        type(exc).__name__,
                    )
                self._write_failing = True
                if attempt < attempts:
                    await asyncio.sleep(self._retry_seconds)
                continue
            if self._write_failing:
                log.info("connection audit: writing events again")
            self._write_failing = False
            return
        # The database keeps refusing: drop this batch (counted) rather than retry it
        # forever while the buffer fills behind it; the next batch is tried afresh.
        log.error("connection audit: dropped %d event(s) the database refused", len(batch))
        metrics.NATS_CONNECTION_EVENTS_DROPPED.labels("write_failed").inc(len(batch))

    def _report_dropped(self) -> None:
        if self.buffer.dropped > self._dropped_reported:
            log.warning(
                "connection audit: %d event(s) dropped, the buffer of %d was full",
                self.buffer.dropped - self._dropped_reported,
                self.buffer.limit,
            )
            self._dropped_reported = self.buffer.dropped

    async def stop(self) -> None:
        """Stop receiving (other replicas get the next events), write what is buffered."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        if self._flushing is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._flushing), STOP_FLUSH_SECONDS)
        with contextlib.suppress(Exception):
            # Unsubscribes and delivers what nats-py already holds to the callbacks.
            await asyncio.wait_for(self._client.drain(), STOP_FLUSH_SECONDS)
        with contextlib.suppress(Exception):
            await self._client.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.flush(attempts=1), STOP_FLUSH_SECONDS)
