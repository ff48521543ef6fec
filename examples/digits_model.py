"""Model factories for ``edgefleet compress`` on scikit-learn's digits.

    python examples/digits_model.py --out var/digits   # writes digits.npz and digits_cnn.pt
    edgefleet compress examples/digits_model.py:build_untrained_model \
        --weights var/digits/digits_cnn.pt --data var/digits/digits.npz \
        --profile deploy/profiles/raspberry-pi-4b.toml --out var/digits/pi4

``build_model`` trains the CNN from scratch with a fixed seed (10 epochs) every time it is
called; ``build_untrained_model`` returns the same architecture for use with ``--weights``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from edgefleet.compress.dataset import save_dataset_npz
from edgefleet.compress.digits import DigitsCNN, digits_dataset, train_digits_cnn


def build_model() -> nn.Module:
    """Return a ``DigitsCNN`` trained on the digits training split (seed 0)."""
    return train_digits_cnn(digits_dataset(seed=0), epochs=10, seed=0)


def build_untrained_model() -> nn.Module:
    """Return an untrained ``DigitsCNN``, to be filled by ``--weights``."""
    return DigitsCNN()


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Write the digits dataset (digits.npz) and trained CNN weights (digits_cnn.pt)."
    )
    parser.add_argument("--out", type=Path, required=True, help="Output directory.")
    arguments = parser.parse_args()
    data_path = save_dataset_npz(digits_dataset(seed=0), arguments.out / "digits.npz")
    weights_path = arguments.out / "digits_cnn.pt"
    torch.save(build_model().state_dict(), weights_path)
    print(f"wrote {data_path} and {weights_path}")  # noqa: T201 - command-line output


if __name__ == "__main__":
    main()
