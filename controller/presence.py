"""Presence by silence: connected devices that have sent nothing for too long.

A transport reports most disconnects itself: a gRPC stream ends or fails its keepalive,
and the broker publishes an MQTT device's will. Neither reports a device whose session
is still open on the controller while nothing arrives from it. That happens after a
broker restart, which drops every connection without sending a single will. ``PresenceWatch``
records when each connected device was last heard from (telemetry, a status or its
presence) and reports which ones crossed the timeout and which of those were heard from
again. The controller shows the first offline and the second online again, and keeps
their sessions, so a device that was only slow loses nothing.

Times are ``time.monotonic()`` seconds. Thread-safe: endpoints call ``heard`` from their
threads while the controller's presence thread calls the rest.
"""

from __future__ import annotations

import threading
from collections.abc import Collection
from dataclasses import dataclass

__all__ = ["PresenceChanges", "PresenceWatch"]


@dataclass(frozen=True, slots=True)
class PresenceChanges:
    """Result of one check: devices that went quiet, and quiet ones heard from again."""

    quiet: list[str]
    back: list[str]


class PresenceWatch:
    """Last message time of each connected device, and the set of quiet ones."""

    def __init__(self, timeout_s: float) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._heard: dict[str, float] = {}
        self._quiet: set[str] = set()

    def heard(self, device_id: str, at: float) -> None:
        """Record a message from ``device_id`` at ``at``; an earlier time changes nothing."""
        with self._lock:
            if at > self._heard.get(device_id, float("-inf")):
                self._heard[device_id] = at

    def connected(self, device_id: str, at: float) -> None:
        """Start watching a device whose session opened at ``at``."""
        with self._lock:
            self._heard[device_id] = at
            self._quiet.discard(device_id)

    def disconnected(self, device_id: str) -> None:
        """Stop watching a device whose session ended."""
        with self._lock:
            self._heard.pop(device_id, None)
            self._quiet.discard(device_id)

    def is_quiet(self, device_id: str) -> bool:
        with self._lock:
            return device_id in self._quiet

    def unheard(self, connected: Collection[str], *, now: float) -> list[str]:
        """Return the connected devices not heard from within the timeout, quiet ones too.

        Before calling ``check`` the caller may pass other evidence to ``heard``, such as
        telemetry that another controller process stored.
        """
        with self._lock:
            return sorted(
                device_id
                for device_id in connected
                if device_id in self._quiet
                or now - self._heard.setdefault(device_id, now) > self.timeout_s
            )

    def check(self, connected: Collection[str], *, now: float) -> PresenceChanges:
        """Mark devices quiet or back, and forget devices that are no longer connected."""
        with self._lock:
            current = set(connected)
            for device_id in [d for d in self._heard if d not in current]:
                del self._heard[device_id]
            self._quiet &= current
            quiet, back = [], []
            for device_id in sorted(current):
                silent = now - self._heard.setdefault(device_id, now) > self.timeout_s
                if silent and device_id not in self._quiet:
                    self._quiet.add(device_id)
                    quiet.append(device_id)
                elif not silent and device_id in self._quiet:
                    self._quiet.discard(device_id)
                    back.append(device_id)
            return PresenceChanges(quiet=quiet, back=back)
