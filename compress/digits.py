"""A small CNN for scikit-learn's bundled handwritten digits, for demos and tests.

``load_digits`` ships with scikit-learn (1,797 grey 8x8 images, 10 classes), so this
model zoo entry needs no download.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from edgefleet.compress.dataset import Dataset
from edgefleet.compress.training import torch_accuracy, train_classifier

__all__ = ["DigitsCNN", "digits_dataset", "train_digits_cnn"]

logger = logging.getLogger(__name__)

DIGITS_CLASSES = 10
# Pixel values in load_digits are counts 0..16 of set pixels in 4x4 blocks of the original.
_DIGITS_MAX_PIXEL = 16.0


class DigitsCNN(nn.Module):
    """Three 3x3 convolutions with batch norm and a linear head, input (N, 1, 8, 8).

    All three convolutions run at the full 8x8 resolution, so the two wide ones dominate
    the cost (about 14 M multiply-adds per sample at the default widths) and channel
    pruning and int8 quantization give measurable speed-ups.
    """

    def __init__(self, widths: tuple[int, int, int] = (64, 128, 128)) -> None:
        super().__init__()
        first, second, third = widths
        self.features = nn.Sequential(
            nn.Conv2d(1, first, 3, padding=1),
            nn.BatchNorm2d(first),
            nn.ReLU(),
            nn.Conv2d(first, second, 3, padding=1),
            nn.BatchNorm2d(second),
            nn.ReLU(),
            nn.Conv2d(second, third, 3, padding=1),
            nn.BatchNorm2d(third),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Linear(third * 4 * 4, DIGITS_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def digits_dataset(seed: int = 0, *, val_fraction: float = 0.2) -> Dataset:
    """Return the digits as a ``Dataset`` with a stratified held-out validation split.

    Inputs are float32 of shape (N, 1, 8, 8) scaled to [0, 1]; the split depends only on
    ``seed`` and ``val_fraction``.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / _DIGITS_MAX_PIXEL).astype(np.float32)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    x_train, x_val, y_train, y_val = train_test_split(
        images, labels, test_size=val_fraction, random_state=seed, stratify=labels
    )
    return Dataset(x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val)


def train_digits_cnn(
    dataset: Dataset,
    *,
    epochs: int = 12,
    seed: int = 0,
    widths: tuple[int, int, int] = (64, 128, 128),
) -> DigitsCNN:
    """Train a ``DigitsCNN`` on ``dataset`` and return it in eval mode."""
    torch.manual_seed(seed)
    model = DigitsCNN(widths)
    train_classifier(model, dataset, epochs=epochs, seed=seed, learning_rate=2e-3)
    accuracy = torch_accuracy(model, dataset.x_val, dataset.y_val)
    logger.info("trained DigitsCNN%s for %d epochs: val accuracy %.4f", widths, epochs, accuracy)
    return model
