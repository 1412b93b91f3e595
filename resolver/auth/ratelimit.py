"""Per-token rate limits: a token bucket for each API token, in this process.

Each token may make ``rate`` requests a second on average and ``burst`` at once; past that
its requests get 429 with ``Retry-After`` until the bucket refills. The buckets are per
process: behind a load balancer with N replicas a token gets up to N times the rate, which
bounds what one leaked or runaway token costs without a shared store on the hot path.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class TokenBuckets:
    """``take(key)``: 0 if a request of ``key`` may go now, else the seconds to wait."""

    def __init__(
        self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        #: key → (tokens left, when they were counted). One entry per API token name.
        self._buckets: dict[str, tuple[float, float]] = {}

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, key: str) -> float:
        if not self.enabled:
            return 0.0
        now = self._clock()
        tokens, then = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate


def retry_after_seconds(wait: float) -> int:
    """``Retry-After`` is whole seconds; rounding down would invite a retry that fails."""
    return max(1, math.ceil(wait))
