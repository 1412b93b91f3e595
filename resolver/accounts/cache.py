"""In-memory cache of served account JWTs, dropped on every change.

nats-server fetches an account on the first connection to it and after every ``exp``; a
fleet restart or a reconnect storm asks for the same few JWTs many times at once, so they
are served from memory. Entries are dropped after every commit that changed the account
(``changes``), by other replicas' PostgreSQL notifications (``listener``), and after
``max_age`` seconds in any case: a safety net for writers that cannot notify, such as the
CLI on a SQLite file.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
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

    def invalidate(self, keys: Iterable[str]) -> None:
        self._generation += 1
        for key in keys:
            self._entries.pop(key, None)

    def clear(self) -> None:
        self._generation += 1
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
