"""Backoff and attempt limits for deployments sent again after a transfer or install failure.

A deployment that FAILED on the device (download, verification, disk or install) leaves
the device serving its previous variant or nothing, and the cause is often transient: a
full or read-only disk, a flaky link. One that failed while the device loaded the model is
not scheduled: the same file fails the same way (see ``Controller._schedule_redeploy``).
``RedeploySchedule`` decides when the same variant is sent again: after ``initial_s``,
doubling with each failure up to ``max_s``, and never after ``max_attempts`` deployments
of that variant to that device.
A ROLLED_BACK deployment is never scheduled, because the device still serves its previous
model and the policy decides what comes next.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable

__all__ = ["DueRedeploy", "RedeploySchedule"]


@dataclasses.dataclass(frozen=True, slots=True)
class DueRedeploy:
    """A deployment to send again: the device, the variant and which attempt it is."""

    device_id: str
    variant_id: str
    attempt: int


class RedeploySchedule:
    """Failure counts and due times per device; safe across threads, kept in memory only.

    A controller restart clears the schedule. A device that then reconnects without its
    desired variant gets it from the session-open check instead.
    """

    def __init__(
        self,
        *,
        initial_s: float,
        max_s: float,
        max_attempts: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.max_attempts = max_attempts
        self._clock = clock
        self._lock = threading.Lock()
        # device id -> (variant id, failed deployments of it so far)
        self._failures: dict[str, tuple[str, int]] = {}
        # device id -> (monotonic due time, the retry)
        self._due: dict[str, tuple[float, DueRedeploy]] = {}

    def record_failure(self, device_id: str, variant_id: str) -> float | None:
        """Count a failed deployment and schedule the next; return its delay in seconds.

        Returns ``None`` when the variant has failed ``max_attempts`` times on the device.
        A failure of another variant starts the count again.
        """
        with self._lock:
            previous_variant, failures = self._failures.get(device_id, (variant_id, 0))
            failures = failures + 1 if previous_variant == variant_id else 1
            self._failures[device_id] = (variant_id, failures)
            if failures >= self.max_attempts:
                self._due.pop(device_id, None)
                return None
            delay_s = min(self.initial_s * 2 ** (failures - 1), self.max_s)
            retry = DueRedeploy(device_id, variant_id, attempt=failures + 1)
            self._due[device_id] = (self._clock() + delay_s, retry)
            return delay_s

    def record_success(self, device_id: str) -> None:
        """Forget the device's failures: a deployment to it became active."""
        with self._lock:
            self._failures.pop(device_id, None)
            self._due.pop(device_id, None)

    def take_due(self) -> list[DueRedeploy]:
        """Remove and return the retries whose time has come."""
        now = self._clock()
        with self._lock:
            due = [retry for at, retry in self._due.values() if at <= now]
            for retry in due:
                del self._due[retry.device_id]
            return due
