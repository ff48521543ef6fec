"""A token bucket that limits how fast new device connections are admitted.

After a broker restart or a network outage every device of a fleet reconnects within
seconds. Each registration costs the controller several database writes and a placement
task, so ``TokenBucket`` admits at most ``rate_per_s`` of them per second on average, with
bursts of up to ``burst``. The endpoints reject the rest with RESOURCE_EXHAUSTED, and the
agents retry with jittered exponential backoff.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from edgefleet.errors import InvalidInputError

__all__ = ["TokenBucket"]


class TokenBucket:
    """Admits events at ``rate_per_s`` on average and ``burst`` at once; thread-safe."""

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not math.isfinite(rate_per_s) or rate_per_s <= 0:
            raise InvalidInputError(f"rate must be a positive number per second, got {rate_per_s}")
        if burst < 1:
            raise InvalidInputError(f"burst must be at least 1, got {burst}")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._updated = clock()
        self._lock = threading.Lock()
        self.admitted = 0
        self.rejected = 0

    def try_acquire(self) -> bool:
        """Take one token; returns False, and counts a rejection, when none is left."""
        with self._lock:
            now = self._clock()
            elapsed = max(0.0, now - self._updated)
            self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate_per_s)
            self._updated = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                self.admitted += 1
                return True
            self.rejected += 1
            return False
