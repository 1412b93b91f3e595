"""The interface handlers use to say "outbox rows were committed": no aiohttp, no NATS here."""

from __future__ import annotations

from typing import Protocol


class PushWaker(Protocol):
    def wake(self) -> None:
        """Non-blocking: the pusher will look at the outbox soon (the outbox is the truth;
        a lost wake-up only delays a push until the next periodic sweep)."""
