"""Bounded queues of messages waiting for the session stream to send them.

``Outbox`` keeps them in memory (the fleet simulator uses it); ``DiskOutbox`` keeps them in
SQLite, so telemetry sampled during an outage or before a restart is sent afterwards.
"""

from __future__ import annotations

import collections
import logging
import sqlite3
import threading
from pathlib import Path

from edgefleet.agent.errors import StorageError
from edgefleet.protos.v1 import fleet_pb2

__all__ = ["MAX_BACKLOG_SAMPLES", "DiskOutbox", "Outbox"]

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


# Telemetry kept while offline. At the default 1 s interval this covers 2 h 46 min of
# outage in about 2 MB of SQLite (a sample is near 150 bytes serialized).
MAX_BACKLOG_SAMPLES = 10_000


class DiskOutbox:
    """A bounded FIFO of session messages in SQLite, kept across outages and restarts.

    Telemetry beyond ``max_samples`` drops the oldest sample and counts it in ``dropped``,
    which is stored too, so the controller learns of every drop. Deployment statuses are
    never dropped, because they are a few per deployment. The interface matches ``Outbox``.

    NOTE: a message leaves the queue when the transport takes it. One taken just before a
    connection breaks is lost, because the protocol has no per-message acknowledgement.
    """

    def __init__(self, path: Path, *, max_samples: int = MAX_BACKLOG_SAMPLES) -> None:
        if max_samples < 1:
            raise ValueError(f"max_samples must be at least 1, got {max_samples}")
        self._max_samples = max_samples
        self._ready = threading.Condition()
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            # WAL with synchronous=NORMAL survives an agent crash; a power cut may lose the
            # last few samples, which costs far less flash wear than an fsync per sample.
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS messages ("
                "id INTEGER PRIMARY KEY, telemetry INTEGER NOT NULL, body BLOB NOT NULL)"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER)"
            )
            row = self._db.execute("SELECT value FROM counters WHERE name = 'dropped'").fetchone()
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open the telemetry backlog {path}: {exc}") from exc
        self.dropped = row[0] if row else 0

    def put(self, message: fleet_pb2.AgentMessage) -> None:
        telemetry = message.WhichOneof("body") == "telemetry"
        with self._ready:
            try:
                self._insert(message, telemetry=telemetry, front=False)
                if telemetry:
                    self._trim()
            except sqlite3.Error as exc:
                # A full disk must not stop the agent: the sample is counted as dropped.
                self.dropped += 1
                logger.warning("cannot queue a %s message: %s", message.WhichOneof("body"), exc)
                return
            self._ready.notify()

    def put_back(self, message: fleet_pb2.AgentMessage) -> None:
        """Return a message taken by ``get`` to the front, for a session that closed meanwhile."""
        with self._ready:
            try:
                self._insert(message, telemetry=message.HasField("telemetry"), front=True)
            except sqlite3.Error as exc:
                self.dropped += 1
                logger.warning("cannot return a message to the backlog: %s", exc)
                return
            self._ready.notify()

    def get(self, timeout_s: float) -> fleet_pb2.AgentMessage | None:
        """Remove and return the oldest message, or ``None`` if none arrived in ``timeout_s``."""
        with self._ready:
            row = self._oldest()
            if row is None:
                self._ready.wait(timeout_s)
                row = self._oldest()
            if row is None:
                return None
            self._db.execute("DELETE FROM messages WHERE id = ?", (row[0],))
            return fleet_pb2.AgentMessage.FromString(row[1])

    def __len__(self) -> int:
        with self._ready:
            return self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]

    def close(self) -> None:
        with self._ready:
            self._db.close()

    def _oldest(self) -> tuple[int, bytes] | None:
        return self._db.execute("SELECT id, body FROM messages ORDER BY id LIMIT 1").fetchone()

    def _insert(self, message: fleet_pb2.AgentMessage, *, telemetry: bool, front: bool) -> None:
        body = message.SerializeToString()
        if front:
            first = self._db.execute("SELECT MIN(id) FROM messages").fetchone()[0]
            row_id = (first if first is not None else 1) - 1
            self._db.execute(
                "INSERT INTO messages (id, telemetry, body) VALUES (?, ?, ?)",
                (row_id, int(telemetry), body),
            )
        else:
            self._db.execute(
                "INSERT INTO messages (telemetry, body) VALUES (?, ?)", (int(telemetry), body)
            )

    def _trim(self) -> None:
        count = self._db.execute("SELECT COUNT(*) FROM messages WHERE telemetry = 1").fetchone()[0]
        excess = count - self._max_samples
        if excess <= 0:
            return
        self._db.execute(
            "DELETE FROM messages WHERE id IN "
            "(SELECT id FROM messages WHERE telemetry = 1 ORDER BY id LIMIT ?)",
            (excess,),
        )
        self.dropped += excess
        self._db.execute(
            "INSERT OR REPLACE INTO counters (name, value) VALUES ('dropped', ?)", (self.dropped,)
        )
        if self.dropped == excess or self.dropped % 100 == 0:
            logger.warning(
                "telemetry backlog full (%d samples): dropped the oldest, %d dropped in all",
                self._max_samples,
                self.dropped,
            )
