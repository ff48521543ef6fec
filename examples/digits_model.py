"""Model factories for ``edgefleet compress`` on scikit-learn's digits.

    python examples/digits_model.py --out var/digits        # writes digits.npz
    edgefleet compress examples/digits_model.py:build_model --data var/digits/digits.npz \
        --profile deploy/profiles/raspberry-pi-4b.toml --out var/digits/pi4

``build_model`` trains the CNN from scratch with a fixed seed (about 10 s on two cores);
``build_untrained_model`` returns the same architecture for use with ``--weights``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

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
    parser = argparse.ArgumentParser(description="Write the digits dataset as an .npz file.")
    parser.add_argument("--out", type=Path, required=True, help="Output directory.")
    arguments = parser.parse_args()
    path = save_dataset_npz(digits_dataset(seed=0), arguments.out / "digits.npz")
    print(f"wrote {path}")  # noqa: T201 - command-line output


if __name__ == "__main__":
    main()
