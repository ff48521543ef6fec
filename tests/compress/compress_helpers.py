"""Helpers shared by the compress tests (imported by module name, tests are not a package)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgefleet.compress import Dataset
from edgefleet.profiles import DeviceProfile, parse_profile

REPO_ROOT = Path(__file__).resolve().parents[2]
PROFILES_DIR = REPO_ROOT / "deploy" / "profiles"


def make_profile(**overrides: object) -> DeviceProfile:
    """Return a valid x86 profile with generous budgets, changed by ``overrides``."""
    fields: dict[str, object] = {
        "name": "test-host",
        "cpu_arch": "x86_64",
        "cpu_cores": 2,
        "cpu_flags": ["avx2"],
        "memory_mb": 4096,
        "model_memory_budget_mb": 512,
        "latency_budget_ms": 50.0,
        "inference_threads": 1,
    }
    fields.update(overrides)
    return parse_profile(fields, source="test")


def random_classification(
    samples: int, shape: tuple[int, ...], classes: int, seed: int = 0
) -> Dataset:
    """Return a ``Dataset`` of random inputs with random labels, for shape-only tests."""
    rng = np.random.default_rng(seed)

    def split(count: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.random((count, *shape), dtype=np.float32)
        return x, rng.integers(0, classes, size=count)

    x_train, y_train = split(samples)
    x_val, y_val = split(max(samples // 4, 2))
    return Dataset(x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val)


def small_model():
    """Factory of the narrow DigitsCNN the ``small_cnn`` fixture trains."""
    from edgefleet.compress import DigitsCNN

    return DigitsCNN((8, 16, 16))
