"""A token bucket that limits how fast new device connections are admitted.

After a broker restart or a network outage every device of a fleet reconnects within
seconds. Each registration costs the controller several database writes and a placement
task, so ``TokenBucket`` admits at most ``rate_per_s`` of them per second on average, with
bursts of up to ``burst``. The endpoints reject the rest with RESOURCE_EXHAUSTED, and the
agents retry with jittered exponential backoff.

``ThrottledLog`` limits log lines instead: a device that repeats a bad message gets one
line per key and window, with the count of the repeats left out.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

from edgefleet.errors import InvalidInputError

__all__ = ["ThrottledLog", "TokenBucket"]

# Keys a ThrottledLog remembers; beyond it the oldest is forgotten, so that made-up device
# ids cannot grow it without bound.
THROTTLED_LOG_KEYS = 10_000


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


class ThrottledLog:
    """Logs the first line of each key per ``window_s`` and counts the rest; thread-safe.

    A key is typically a device id and a message kind. The next line logged for a key
    ends with the count of lines left out since the last one.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        window_s: float = 60.0,
        level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self.window_s = window_s
        self._level = level
        self._clock = clock
        self._lock = threading.Lock()
        # key -> (clock time of its last logged line, lines left out since)
        self._keys: dict[object, tuple[float, int]] = {}

    def log(self, key: object, line: str, *args: object, **kwargs: object) -> bool:
        """Log ``line % args`` unless ``key`` logged within the window; returns whether it did.

        ``kwargs`` go to ``Logger.log`` (``extra``, for example).
        """
        now = self._clock()
        with self._lock:
            logged_at, left_out = self._keys.get(key, (None, 0))
            if logged_at is not None and now - logged_at < self.window_s:
                self._keys[key] = (logged_at, left_out + 1)
                return False
            self._keys.pop(key, None)
            if len(self._keys) >= THROTTLED_LOG_KEYS:
                del self._keys[next(iter(self._keys))]
            self._keys[key] = (now, 0)
        if left_out:
            line += " (%d more like it since the last one, not logged)"
            args = (*args, left_out)
        self._logger.log(self._level, line, *args, **kwargs)  # type: ignore[arg-type]
        return True
