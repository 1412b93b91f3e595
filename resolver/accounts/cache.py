"""In-memory cache of served account JWTs, dropped on every change.

nats-server fetches an account on the first connection to it and after every ``exp``; a
fleet restart or a reconnect storm asks for the same few JWTs many times at once, so they
are served from memory. Entries are dropped after every commit that changed the account
(``changes``), by other replicas' PostgreSQL notifications (``listener``), and after
``max_age`` seconds in any case: a safety net for writers that cannot notify, such as the
CLI on a SQLite file.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import cached_property

from resolver.accounts.presenting import cache_control, etag_of


@dataclass(frozen=True)
class CachedJWT:
    account_key: str
    jwt: str
    jti: str
    expires_at: int | None

    # Built once per cached entry, not per request: nats-server fetches the same few
    # accounts over and over, and these are most of what a response needs.
    @cached_property
    def body(self) -> bytes:
        return self.jwt.encode("ascii")

    @cached_property
    def etag(self) -> str:
        return etag_of(self.jti)

    def headers(self, now: int) -> dict[str, str]:
        """Response headers of a plain GET at unix second ``now``, built once per second."""
        memo = self.__dict__.get("_headers")
        if memo is None or memo[0] != now:
            memo = (
                now,
                {
                    "Content-Type": "application/jwt",
                    "ETag": self.etag,
                    "Cache-Control": cache_control(self.expires_at, now),
                },
            )
            self.__dict__["_headers"] = memo  # frozen dataclass: a memo, not state
        return memo[1]


class AccountJWTCache:
    """Account public key → current JWT. Not thread-safe; one per event loop (per app)."""

    def __init__(
        self,
        *,
        max_age: float = 5.0,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_age = max_age
        self.max_entries = max_entries
        self._clock = clock
        self._entries: dict[str, tuple[float, CachedJWT]] = {}
        # Bumped on every invalidation: a read that started before it must not store what
        # it read (it may be the old JWT), see ``generation``/``put``.
        self._generation = 0
        # Loads under way: key -> (generation it started in, its result).
        self._loading: dict[str, tuple[int, asyncio.Future[CachedJWT | None]]] = {}

    @property
    def generation(self) -> int:
        """Take this before reading the database; hand it to ``put`` afterwards."""
        return self._generation

    def get(self, account_key: str) -> CachedJWT | None:
        found = self._entries.get(account_key)
        if found is None:
            return None
        stored_at, entry = found
        if self._clock() - stored_at > self.max_age:
            self._entries.pop(account_key, None)
            return None
        return entry

    def put(self, entry: CachedJWT, *, generation: int) -> None:
        """Store ``entry`` unless something was invalidated since ``generation`` was taken."""
        if generation != self._generation:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()  # crude, but bounded; a refill costs one query per key
        self._entries[entry.account_key] = (self._clock(), entry)

    async def get_or_load(
        self, account_key: str, load: Callable[[], Awaitable[CachedJWT | None]]
    ) -> CachedJWT | None:
        """The cached entry, else ``load()``'s result (stored), one load per key at a time.

        Every entry ages out at the same moment for all the requests that want it: under
        load, dozens of requests would miss together and each run the same query (about a
        tenth of the CPU at 30,000 requests per second on SQLite). They share one load
        instead. A request joins only a load that started after the last invalidation, so
        it never receives a JWT older than a change committed before it arrived.
        """
        found = self.get(account_key)
        if found is not None:
            return found
        pending = self._loading.get(account_key)
        if pending is not None and pending[0] == self._generation:
            # If the leader's load failed, try on our own, so errors stay per request.
            with contextlib.suppress(Exception):
                return await asyncio.shield(pending[1])
        generation = self._generation
        future: asyncio.Future[CachedJWT | None] = asyncio.get_running_loop().create_future()
        self._loading[account_key] = (generation, future)
        try:
            found = await load()
        except BaseException as exc:
            future.set_exception(exc if isinstance(exc, Exception) else RuntimeError("cancelled"))
            future.exception()  # retrieved: no "never retrieved" warning without waiters
            raise
        finally:
            if self._loading.get(account_key, (None, None))[1] is future:
                del self._loading[account_key]
        future.set_result(found)
        if found is not None:
            self.put(found, generation=generation)
        return found

    def invalidate(self, keys: Iterable[str]) -> None:
        self._generation += 1
        for key in keys:
            self._entries.pop(key, None)

    def clear(self) -> None:
        self._generation += 1
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
