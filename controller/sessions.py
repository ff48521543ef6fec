"""Open device sessions, one per connected device, whatever transport carries them.

A ``DeviceSession`` is the controller's handle on one connected device: ``send`` delivers
a ``ControllerMessage`` to it. ``StreamSession`` queues messages for a gRPC Session stream,
whose handler thread blocks in ``outgoing``; ``edgefleet.controller.mqtt_endpoint``
publishes them to the device's commands topic. The controller's logic uses only this
interface. A device that opens a second session replaces its first, which ends, so
commands never go to a stream that its agent has abandoned.
"""

from __future__ import annotations

import abc
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator

from edgefleet.protos.v1 import fleet_pb2

__all__ = ["DeviceSession", "SessionRegistry", "StreamSession"]

logger = logging.getLogger(__name__)

# A device id whose sessions replace each other this many times within the window is
# most likely used by two agents at once (a copied state directory or SD card image).
TAKEOVER_ALERT_COUNT = 5
TAKEOVER_WINDOW_S = 30.0

# How often a blocked ``outgoing`` wakes to check whether the RPC is still alive.
_POLL_INTERVAL_S = 1.0


class DeviceSession(abc.ABC):
    """One connected device, as the controller's logic uses it."""

    # Transport name for logs and the device list ("grpc", "mqtt").
    transport: str = ""

    def __init__(self, device_id: str) -> None:
        self.device_id = device_id
        self._closed = threading.Event()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @abc.abstractmethod
    def send(self, message: fleet_pb2.ControllerMessage) -> bool:
        """Deliver ``message`` to the device; returns False if the session is closed."""

    def close(self) -> None:
        """End the session; later ``send`` calls return False."""
        self._closed.set()


class StreamSession(DeviceSession):
    """A session whose messages a stream writer drains through ``outgoing`` (gRPC)."""

    transport = "grpc"

    def __init__(self, device_id: str) -> None:
        super().__init__(device_id)
        self._queue: queue.Queue[fleet_pb2.ControllerMessage | None] = queue.Queue()

    def send(self, message: fleet_pb2.ControllerMessage) -> bool:
        """Queue ``message``; returns False if the session is already closed."""
        if self._closed.is_set():
            return False
        self._queue.put(message)
        return True

    def close(self) -> None:
        """End the session; ``outgoing`` returns after the messages queued so far."""
        if not self._closed.is_set():
            self._closed.set()
            self._queue.put(None)

    def outgoing(self) -> Iterator[fleet_pb2.ControllerMessage]:
        """Yield queued messages until the session closes."""
        while True:
            try:
                message = self._queue.get(timeout=_POLL_INTERVAL_S)
            except queue.Empty:
                if self._closed.is_set():
                    return
                continue
            if message is None:
                return
            yield message


class SessionRegistry:
    """The open session of each connected device."""

    def __init__(self) -> None:
        self._sessions: dict[str, DeviceSession] = {}
        self._lock = threading.Lock()
        self._accepting = True
        # Per device: times of its latest takeovers, and of its latest takeover alert.
        self._takeovers: dict[str, deque[float]] = {}
        self._takeover_alerted: dict[str, float] = {}

    def open(self, session: DeviceSession) -> DeviceSession:
        """Add ``session``, closing the one its device had before; returns ``session``."""
        device_id = session.device_id
        with self._lock:
            previous = self._sessions.get(device_id)
            if not self._accepting:
                session.close()
                return session
            self._sessions[device_id] = session
            if previous is not None:
                self._count_takeover(device_id)
        if previous is not None:
            logger.info("device %s opened a new session; closing its previous one", device_id)
            previous.close()
        return session

    def count_takeover(self, device_id: str) -> None:
        """Count a takeover of the device's session that kept the open session.

        The MQTT endpoint calls it for an ONLINE presence that repeats the open session's
        variant: a second agent with this device id, or a reconnect before the will.
        """
        with self._lock:
            self._count_takeover(device_id)

    def _count_takeover(self, device_id: str) -> None:
        # Caller holds self._lock.
        times = self._takeovers.setdefault(device_id, deque(maxlen=TAKEOVER_ALERT_COUNT))
        times.append(time.monotonic())

    def takeover_burst(self, device_id: str) -> int:
        """Return the device's count of recent takeovers when they form a new burst, else 0.

        A burst is ``TAKEOVER_ALERT_COUNT`` takeovers within ``TAKEOVER_WINDOW_S``. Once a
        burst is returned, the next one for the device is returned a window later at the
        earliest, so each burst is reported once.
        """
        now = time.monotonic()
        with self._lock:
            times = self._takeovers.get(device_id)
            if times is None or len(times) < TAKEOVER_ALERT_COUNT:
                return 0
            if now - times[0] > TAKEOVER_WINDOW_S:
                return 0
            if now - self._takeover_alerted.get(device_id, float("-inf")) < TAKEOVER_WINDOW_S:
                return 0
            self._takeover_alerted[device_id] = now
            return len(times)

    def remove(self, session: DeviceSession) -> bool:
        """Close ``session`` and forget it; returns False if a newer session replaced it."""
        session.close()
        with self._lock:
            if self._sessions.get(session.device_id) is not session:
                return False
            del self._sessions[session.device_id]
            return True

    def send(self, device_id: str, message: fleet_pb2.ControllerMessage) -> bool:
        """Queue ``message`` for ``device_id``; returns False if the device is not connected."""
        with self._lock:
            session = self._sessions.get(device_id)
        return session is not None and session.send(message)

    def get(self, device_id: str) -> DeviceSession | None:
        with self._lock:
            return self._sessions.get(device_id)

    def is_connected(self, device_id: str) -> bool:
        with self._lock:
            return device_id in self._sessions

    def connected(self) -> list[str]:
        with self._lock:
            return sorted(self._sessions)

    def close_all(self) -> None:
        """Close every session and reject new ones (at shutdown)."""
        with self._lock:
            self._accepting = False
            sessions = list(self._sessions.values())
            self._sessions.clear()
        for session in sessions:
            session.close()
