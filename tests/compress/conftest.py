"""Shared fixtures: the digits dataset and a digits CNN trained once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edgefleet.compress import Dataset, DigitsCNN, digits_dataset, train_digits_cnn


@pytest.fixture(scope="session")
def digits() -> Dataset:
    return digits_dataset(seed=0)


@pytest.fixture(scope="session")
def digits_cnn(digits: Dataset) -> DigitsCNN:
    return train_digits_cnn(digits, epochs=8, seed=0)


@pytest.fixture(scope="session")
def small_digits(digits: Dataset) -> Dataset:
    """A 400/120 sample subset of the digits, for tests that only need the plumbing."""
    return Dataset(
        x_train=digits.x_train[:400],
        y_train=digits.y_train[:400],
        x_val=digits.x_val[:120],
        y_val=digits.y_val[:120],
    )


@pytest.fixture(scope="session")
def small_cnn(small_digits: Dataset) -> DigitsCNN:
    return train_digits_cnn(small_digits, epochs=3, seed=0, widths=(8, 16, 16))


@pytest.fixture(scope="session")
def small_cnn_weights(small_cnn: DigitsCNN, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "small_cnn.pt"
    torch.save(small_cnn.state_dict(), path)
    return path
