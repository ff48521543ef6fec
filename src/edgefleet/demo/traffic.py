"""Drive an agent's local inference API with held-out digits and score the predictions."""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)


@dataclass
class VariantScore:
    """Requests one variant served: how many, and how many it classified correctly."""

    served: int = 0
    correct: int = 0

    @property
    def accuracy(self) -> float:
        return self.correct / self.served if self.served else float("nan")


@dataclass
class TrafficStats:
    """Per-variant scores and failures of one device's request stream."""

    by_variant: dict[str, VariantScore] = field(default_factory=lambda: defaultdict(VariantScore))
    failures: int = 0
    last_error: str = ""


class DigitsTraffic(threading.Thread):
    """Send one held-out digit at a time to ``url`` at about ``rate`` requests per second."""

    def __init__(self, url: str, x: np.ndarray, y: np.ndarray, *, rate: float, seed: int) -> None:
        super().__init__(name=f"traffic {url}", daemon=True)
        self.url = url.rstrip("/") + "/v1/infer"
        self.x = x
        self.y = y
        self.interval_s = 1.0 / rate
        self.stats = TrafficStats()
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def snapshot(self) -> dict[str, VariantScore]:
        with self._lock:
            return {
                variant_id: VariantScore(score.served, score.correct)
                for variant_id, score in self.stats.by_variant.items()
            }

    def run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            index = int(self._rng.integers(len(self.y)))
            self._send(self.x[index], int(self.y[index]))
            next_at += self.interval_s
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _send(self, image: np.ndarray, label: int) -> None:
        body = json.dumps({"input": image[np.newaxis].tolist()}).encode()
        request = urllib.request.Request(
            self.url, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                payload = json.load(response)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            # 503 before the first deployment is expected; anything else is counted.
            with self._lock:
                self.stats.failures += 1
                self.stats.last_error = str(exc)
            return

        outputs = next(iter(payload["outputs"].values()))
        predicted = int(np.argmax(np.asarray(outputs)))
        with self._lock:
            score = self.stats.by_variant[payload["variant_id"]]
            score.served += 1
            score.correct += int(predicted == label)
