"""Jittered exponential backoff for reconnecting to the controller."""

from __future__ import annotations

import dataclasses
import random

__all__ = ["Backoff"]


@dataclasses.dataclass(slots=True)
class Backoff:
    """Delays that double from ``initial_s`` up to ``max_s``, each drawn from its upper half.

    Drawing from [d/2, d] ("equal jitter") spreads the reconnects of a fleet that lost the
    controller at the same moment, while keeping every delay at least half the nominal one.
    """

    initial_s: float = 0.5
    max_s: float = 10.0
    attempt: int = 0
    rng: random.Random = dataclasses.field(default_factory=random.Random)

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.max_s:
            raise ValueError(
                f"backoff needs 0 < initial_s <= max_s, got {self.initial_s} and {self.max_s}"
            )

    def next_delay(self) -> float:
        """Return the delay before the next attempt and count the attempt."""
        nominal = min(self.max_s, self.initial_s * 2 ** min(self.attempt, 32))
        self.attempt += 1
        return nominal / 2 + self.rng.uniform(0, nominal / 2)

    def reset(self) -> None:
        self.attempt = 0
