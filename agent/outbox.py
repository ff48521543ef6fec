"""Bounded queue of messages waiting for the session stream to send them."""

from __future__ import annotations

import collections
import logging
import threading

from edgefleet.protos.v1 import fleet_pb2

__all__ = ["Outbox"]

logger = logging.getLogger(__name__)

# Telemetry is queued only while a session is open, so the outbox fills up only when the
# stream stalls. Deployment statuses queued while offline are a few per deployment.
MAX_PENDING_MESSAGES = 1000


class Outbox:
    """Thread-safe FIFO that drops its oldest message when full, logging each drop."""

    def __init__(self, *, max_messages: int = MAX_PENDING_MESSAGES) -> None:
        self._messages: collections.deque[fleet_pb2.AgentMessage] = collections.deque(
            maxlen=max_messages
        )
        self._ready = threading.Condition()
        self.dropped = 0

    def put(self, message: fleet_pb2.AgentMessage) -> None:
        with self._ready:
            if len(self._messages) == self._messages.maxlen:
                self.dropped += 1
                logger.warning(
                    "outbox full, dropped the oldest %s message (%d dropped in all)",
                    self._messages[0].WhichOneof("body"),
                    self.dropped,
                )
            self._messages.append(message)
            self._ready.notify()

    def put_back(self, message: fleet_pb2.AgentMessage) -> None:
        """Return a message taken by ``get`` to the front, for a session that closed meanwhile."""
        with self._ready:
            if len(self._messages) == self._messages.maxlen:
                self.dropped += 1
                return
            self._messages.appendleft(message)
            self._ready.notify()

    def get(self, timeout_s: float) -> fleet_pb2.AgentMessage | None:
        """Return the oldest message, or ``None`` if none arrived within ``timeout_s``."""
        with self._ready:
            if not self._messages:
                self._ready.wait(timeout_s)
            return self._messages.popleft() if self._messages else None

    def __len__(self) -> int:
        with self._ready:
            return len(self._messages)
