"""Real CPU contention on chosen cores: busy-looping processes pinned with sched_setaffinity."""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections.abc import Iterable

logger = logging.getLogger(__name__)


def _spin(cores: frozenset[int]) -> None:
    os.sched_setaffinity(0, cores)
    while True:  # burns CPU until the parent terminates the process
        pass


class CpuContention:
    """Start ``workers`` busy-looping processes confined to ``cores``; stop them on exit."""

    def __init__(self, cores: Iterable[int], *, workers: int) -> None:
        if workers <= 0:
            raise ValueError(f"workers must be positive, got {workers}")
        self.cores = frozenset(cores)
        self.workers = workers
        self.started_at: float | None = None
        self._processes: list[multiprocessing.Process] = []

    def start(self) -> None:
        # "spawn" keeps the children free of the parent's threads and locks.
        context = multiprocessing.get_context("spawn")
        for _ in range(self.workers):
            process = context.Process(target=_spin, args=(self.cores,), daemon=True)
            process.start()
            self._processes.append(process)
        self.started_at = time.monotonic()
        logger.debug("started %d CPU hogs on cores %s", self.workers, sorted(self.cores))

    def stop(self) -> None:
        for process in self._processes:
            process.terminate()
        for process in self._processes:
            process.join(timeout=5)
        if self._processes:
            logger.debug("stopped %d CPU hogs", len(self._processes))
        self._processes.clear()

    def __enter__(self) -> CpuContention:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
