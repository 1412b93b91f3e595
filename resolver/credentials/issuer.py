"""Credentials decided in batches: requests that arrive together share one transaction.

Every way to credentials (token exchange, front proxy, auth callout) queues its request
here. One task per process takes everything queued and decides it with ``exchange_many``
in one transaction, then takes the next lot. Under load this shares out what each
transaction costs: the read of grants, the account lock (on SQLite the database's one write
lock), the re-read under it, the inserts and the commit. A request that arrives alone is a
batch of one and waits for nothing.

A refusal is decided per request and changes nothing for the others in its batch. If a
batch fails as a whole (a database error), its requests are decided again one by one, so
one request that trips something cannot fail the requests queued with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from resolver.config import Settings
from resolver.credentials.exchange import Ask, IssuedCredentials, Outcome, exchange_many
from resolver.db.sqlite_driver import inline_statements
from resolver.sealing import Sealer

log = logging.getLogger("resolver.credentials")

#: Requests decided in one transaction at most. Enough to take a burst in a few
#: transactions; few enough that a batch holds the write lock for milliseconds, not more.
MAX_BATCH = 64

_Waiting = tuple[Ask, "asyncio.Future[IssuedCredentials]"]


class CredentialIssuer:
    """Queues asks and decides them in batches (see the module docstring)."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        sealer: Sealer,
        settings: Settings,
        *,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._sealer = sealer
        self._settings = settings
        self._max_batch = max_batch
        self._queue: list[_Waiting] = []
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: Batches decided so far, and the requests in them (for tests and benchmarks).
        self.batches = 0
        self.decided = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="credential-issuer")

    async def stop(self) -> None:
        """Stop deciding; requests still queued are cancelled (their callers see it)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for _ask, future in self._queue:
            future.cancel()
        self._queue.clear()

    async def issue(self, ask: Ask) -> IssuedCredentials:
        """The credentials ``ask`` gets, committed; raises its refusal (a ResolverError)."""
        if self._task is None:
            raise RuntimeError("the credential issuer is not running")
        future: asyncio.Future[IssuedCredentials] = asyncio.get_running_loop().create_future()
        self._queue.append((ask, future))
        self._ready.set()
        return await future

    async def _run(self) -> None:
        while True:
            await self._ready.wait()
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
            if not self._queue:
                self._ready.clear()
            # A caller that went away (a closed connection) needs no decision.
            batch = [(ask, future) for ask, future in batch if not future.done()]
            if batch:
                await self._decide(batch)

    async def _decide(self, batch: list[_Waiting]) -> None:
        try:
            outcomes = await self._transaction([ask for ask, _ in batch])
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0][1], exc)
                return
            log.warning(
                "a batch of %d credential requests failed (%s); deciding them one by one",
                len(batch),
                type(exc).__name__,
            )
            for waiting in batch:
                await self._decide([waiting])
            return
        self.batches += 1
        self.decided += len(batch)
        for (_ask, future), outcome in zip(batch, outcomes, strict=True):
            _settle(future, outcome)

    async def _transaction(self, asks: list[Ask]) -> list[Outcome]:
        # The batch's statements are few, small and indexed: on SQLite, run them on this
        # thread rather than paying a thread hand-off for each (see inline_statements).
        with inline_statements():
            async with self._sessionmaker() as session, session.begin():
                return await exchange_many(session, self._sealer, self._settings, asks)


def _settle(future: asyncio.Future[IssuedCredentials], outcome: Outcome | BaseException) -> None:
    if future.done():  # the caller went away meanwhile
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
