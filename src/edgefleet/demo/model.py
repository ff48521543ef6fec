"""The demo's model: a CNN trained on scikit-learn's bundled digits, cached between runs."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgefleet.compress import Dataset, digits_dataset, load_dataset, save_dataset_npz

# Bump when the model, its training or the split changes, so that old caches are ignored.
CACHE_VERSION = "digits-cnn-128-v1"
TRAINING_EPOCHS = 12
# Wide enough that fp32 inference takes over a millisecond: shorter runs finish inside
# one scheduler time slice, so CPU contention barely shows in their latency.
WIDTHS = (128, 256, 256)

FACTORY_SOURCE = '''\
"""Factory for the demo's digits CNN; the controller loads trained weights into it."""

from edgefleet.compress.digits import DigitsCNN


def build_model():
    return DigitsCNN(widths=(128, 256, 256))
'''


@dataclass(frozen=True)
class DemoModel:
    """Files the controller needs to register the model, and the data to drive agents."""

    dataset: Dataset
    data_path: Path
    weights_path: Path
    factory_path: Path

    def controller_args(self) -> list[str]:
        return [
            "--model",
            f"{self.factory_path}:build_model",
            "--weights",
            str(self.weights_path),
            "--data",
            str(self.data_path),
        ]


def prepare_model(cache_dir: Path, *, say: Callable[[str], None]) -> DemoModel:
    """Load the trained model from ``cache_dir``, training it first if it is missing."""
    folder = cache_dir / CACHE_VERSION
    folder.mkdir(parents=True, exist_ok=True)
    data_path = folder / "digits.npz"
    weights_path = folder / "digits_cnn.pt"
    factory_path = folder / "digits_model.py"
    factory_path.write_text(FACTORY_SOURCE)

    if data_path.exists() and weights_path.exists():
        say(f"digits CNN loaded from the cache in {folder}")
        return DemoModel(load_dataset(data_path), data_path, weights_path, factory_path)

    import torch

    from edgefleet.compress import train_digits_cnn

    dataset = digits_dataset(seed=0)
    say(
        f"training a CNN on scikit-learn's digits: {len(dataset.y_train)} training and "
        f"{len(dataset.y_val)} held-out images, {TRAINING_EPOCHS} epochs"
    )
    started = time.monotonic()
    model = train_digits_cnn(dataset, epochs=TRAINING_EPOCHS, seed=0, widths=WIDTHS)
    say(f"trained in {time.monotonic() - started:.0f} s; cached in {folder}")

    # Write to temporary names first so that an interrupted run leaves no half cache.
    partial_data = folder / "digits.partial.npz"
    partial_weights = folder / "digits_cnn.partial.pt"
    save_dataset_npz(dataset, partial_data)
    torch.save(model.state_dict(), partial_weights)
    os.replace(partial_data, data_path)
    os.replace(partial_weights, weights_path)
    return DemoModel(dataset, data_path, weights_path, factory_path)
