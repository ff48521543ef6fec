"""Bounded queues of messages waiting for the session stream to send them.

``Outbox`` keeps them in memory, for the fleet simulator. ``DiskOutbox`` keeps them in
SQLite, so telemetry sampled during an outage or before a restart is sent afterwards.
"""

from __future__ import annotations

import collections
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

from edgefleet.agent.errors import StorageError
from edgefleet.protos.v1 import fleet_pb2

__all__ = ["MAX_BACKLOG_SAMPLES", "DiskOutbox", "Outbox", "open_disk_outbox"]

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

    A telemetry sample stays on disk after ``get`` hands it to the transport, marked in
    flight, until ``acknowledge`` receives its seq (the controller's ``SessionAck`` on gRPC,
    the broker's PUBACK on MQTT). ``requeue`` returns samples still in flight when a session
    ends, so a sample written into a connection that broke is sent again. Samples are
    numbered by ``next_seq`` for the life of the state directory, so a receipt for seq N
    covers every sample up to N.

    Telemetry beyond ``max_samples`` drops the oldest sample and counts it in ``dropped``,
    which is stored too, so the controller learns of every drop. Deployment statuses are
    never dropped and leave the queue when taken, because they are a few per deployment
    and the controller re-sends a deployment whose outcome it did not hear.

    Raises ``sqlite3.DatabaseError`` for a file that is not a backlog; ``open_disk_outbox``
    replaces such a file.
    """

    def __init__(self, path: Path, *, max_samples: int = MAX_BACKLOG_SAMPLES) -> None:
        if max_samples < 1:
            raise ValueError(f"max_samples must be at least 1, got {max_samples}")
        self._max_samples = max_samples
        self._ready = threading.Condition()
        self._closed = False
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        try:
            # WAL with synchronous=NORMAL survives an agent crash. A power cut may lose the
            # last few samples, which costs far less flash wear than an fsync per sample.
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS backlog (id INTEGER PRIMARY KEY, seq INTEGER, "
                "in_flight INTEGER NOT NULL DEFAULT 0, body BLOB NOT NULL)"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER)"
            )
            # Tables of another schema survive CREATE TABLE IF NOT EXISTS; these fail on them.
            self._db.execute("SELECT id, seq, in_flight, body FROM backlog LIMIT 0")
            self._db.execute("SELECT name, value FROM counters LIMIT 0")
            # Whatever was in flight when the agent stopped was never acknowledged.
            self._db.execute("UPDATE backlog SET in_flight = 0")
            self.dropped = self._counter("dropped")
        except sqlite3.Error:
            self._db.close()
            raise

    def count_dropped(self, samples: int) -> None:
        """Add ``samples`` lost outside the backlog (a corrupt file) to the stored drop count."""
        with self._ready:
            self.dropped += samples
            self._set_counter("dropped", self.dropped)

    def next_seq(self) -> int:
        """Return the next telemetry seq, stored so that it keeps growing across restarts."""
        with self._ready:
            seq = self._counter("seq") + 1
            self._set_counter("seq", seq)
            return seq

    def put(self, message: fleet_pb2.AgentMessage) -> None:
        with self._ready:
            try:
                self._insert(message, front=False)
                if message.HasField("telemetry"):
                    self._trim()
            except sqlite3.Error as exc:
                # A full disk must not stop the agent: the sample is counted as dropped.
                self.dropped += 1
                logger.warning("cannot queue a %s message: %s", message.WhichOneof("body"), exc)
                return
            self._ready.notify()

    def put_back(self, message: fleet_pb2.AgentMessage) -> None:
        """Return a message taken by ``get`` but not sent, ahead of the others."""
        with self._ready:
            try:
                if message.HasField("telemetry"):
                    self._db.execute(
                        "UPDATE backlog SET in_flight = 0 WHERE seq = ?", (message.telemetry.seq,)
                    )
                else:
                    self._insert(message, front=True)
            except sqlite3.Error as exc:
                self.dropped += 1
                logger.warning("cannot return a message to the backlog: %s", exc)
                return
            self._ready.notify()

    def get(
        self, timeout_s: float, *, keep_in_flight: bool = True
    ) -> fleet_pb2.AgentMessage | None:
        """Return the oldest message not in flight, or ``None`` if none came in ``timeout_s``.

        With ``keep_in_flight`` false a sample leaves the backlog at once, for a controller
        that sends no receipts.
        """
        with self._ready:
            row = self._oldest()
            if row is None:
                self._ready.wait(timeout_s)
                row = self._oldest()
            if row is None:
                return None
            row_id, seq, body = row
            if seq is None or not keep_in_flight:
                self._db.execute("DELETE FROM backlog WHERE id = ?", (row_id,))
            else:
                self._db.execute("UPDATE backlog SET in_flight = 1 WHERE id = ?", (row_id,))
            return fleet_pb2.AgentMessage.FromString(body)

    def acknowledge(self, seq: int) -> None:
        """Delete the samples in flight up to ``seq``: the controller has them."""
        with self._ready:
            self._db.execute("DELETE FROM backlog WHERE in_flight = 1 AND seq <= ?", (seq,))

    def requeue(self) -> int:
        """Make samples in flight pending again (a session ended); returns how many."""
        with self._ready:
            cursor = self._db.execute("UPDATE backlog SET in_flight = 0 WHERE in_flight = 1")
            if cursor.rowcount:
                self._ready.notify()
            return cursor.rowcount

    def forget_in_flight(self) -> int:
        """Delete samples in flight, for a controller that sends no receipts."""
        with self._ready:
            return self._db.execute("DELETE FROM backlog WHERE in_flight = 1").rowcount

    def __len__(self) -> int:
        with self._ready:
            return self._db.execute("SELECT COUNT(*) FROM backlog").fetchone()[0]

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._db.close()

    def _oldest(self) -> tuple[int, int | None, bytes] | None:
        if self._closed:
            return None  # a sender still draining while the agent shuts down
        return self._db.execute(
            "SELECT id, seq, body FROM backlog WHERE in_flight = 0 ORDER BY id LIMIT 1"
        ).fetchone()

    def _insert(self, message: fleet_pb2.AgentMessage, *, front: bool) -> None:
        seq = message.telemetry.seq if message.HasField("telemetry") else None
        body = message.SerializeToString()
        if front:
            first = self._db.execute("SELECT MIN(id) FROM backlog").fetchone()[0]
            row_id = (first if first is not None else 1) - 1
            self._db.execute(
                "INSERT INTO backlog (id, seq, body) VALUES (?, ?, ?)", (row_id, seq, body)
            )
        else:
            self._db.execute("INSERT INTO backlog (seq, body) VALUES (?, ?)", (seq, body))

    def _trim(self) -> None:
        count = self._db.execute("SELECT COUNT(*) FROM backlog WHERE seq IS NOT NULL").fetchone()[0]
        excess = count - self._max_samples
        if excess <= 0:
            return
        self._db.execute(
            "DELETE FROM backlog WHERE id IN "
            "(SELECT id FROM backlog WHERE seq IS NOT NULL ORDER BY id LIMIT ?)",
            (excess,),
        )
        self.dropped += excess
        self._set_counter("dropped", self.dropped)
        if self.dropped == excess or self.dropped % 100 == 0:
            logger.warning(
                "telemetry backlog full (%d samples): dropped the oldest, %d dropped in all",
                self._max_samples,
                self.dropped,
            )

    def _counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def _set_counter(self, name: str, value: int) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO counters (name, value) VALUES (?, ?)", (name, value)
        )


def open_disk_outbox(path: Path, *, max_samples: int = MAX_BACKLOG_SAMPLES) -> DiskOutbox:
    """Open the backlog at ``path``, replacing a corrupt one with a new, empty backlog.

    The backlog holds only unsent telemetry, so a file that is not a database or has
    another schema (a power cut on an SD card) must not stop the agent from serving. It
    is renamed to ``<name>.corrupt-<UTC time>`` for inspection, and the samples it held
    are counted as dropped when they can still be counted. Raises ``StorageError`` when
    the file cannot be moved aside or the new backlog cannot be created either.
    """
    try:
        return DiskOutbox(path, max_samples=max_samples)
    except sqlite3.DatabaseError as exc:
        error = exc
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    lost = _count_stored_samples(path)
    try:
        os.replace(path, aside)
        # A leftover write-ahead log would be replayed into the new database.
        for suffix in ("-wal", "-shm"):
            companion = path.with_name(path.name + suffix)
            if companion.exists():
                os.replace(companion, aside.with_name(aside.name + suffix))
    except OSError as exc:
        raise StorageError(
            f"cannot open the telemetry backlog {path} ({error}) "
            f"nor move it aside: {exc}; delete the file to start a new backlog"
        ) from exc
    if lost is None:
        logger.warning(
            "telemetry backlog %s is unreadable (%s); moved it to %s and started a new one; "
            "cannot tell how many unsent samples it held",
            path,
            error,
            aside,
        )
    else:
        logger.warning(
            "telemetry backlog %s is unreadable (%s); moved it to %s and started a new one; "
            "%d unsent samples counted as dropped",
            path,
            error,
            aside,
            lost,
        )
    try:
        outbox = DiskOutbox(path, max_samples=max_samples)
    except sqlite3.Error as exc:
        raise StorageError(f"cannot create the telemetry backlog {path}: {exc}") from exc
    if lost:
        outbox.count_dropped(lost)
    return outbox


def _count_stored_samples(path: Path) -> int | None:
    """Return the samples and drops recorded in a damaged backlog, or ``None`` if unreadable."""
    try:
        # Read-only, so that nothing is written into the file kept for inspection.
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return None
    try:
        pending = db.execute("SELECT COUNT(*) FROM backlog WHERE seq IS NOT NULL").fetchone()[0]
    except sqlite3.Error:
        db.close()
        return None
    try:
        row = db.execute("SELECT value FROM counters WHERE name = 'dropped'").fetchone()
        dropped = int(row[0]) if row else 0
    except (sqlite3.Error, TypeError, ValueError):
        dropped = 0  # the drops counted before are lost, the pending samples are not
    finally:
        db.close()
    return int(pending) + dropped
