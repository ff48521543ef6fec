"""One controller process per data directory, enforced with an advisory file lock."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from edgefleet.controller.errors import ControllerStateError

__all__ = ["DataDirLock"]

LOCK_FILE = "controller.lock"


class DataDirLock:
    """An exclusive ``flock`` on ``<data dir>/controller.lock``, held while a controller runs.

    The kernel releases the lock when the process exits, however it exits, so a controller
    killed with SIGKILL never leaves a stale lock behind.
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock; raises ``ControllerStateError`` naming the process that holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ControllerStateError(
                f"another controller (pid {holder}) uses the data directory "
                f"{self.path.parent}; stop it, or pass a different --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None
