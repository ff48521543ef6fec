"""Generator of ``reference.onnx``, the fixed conv net that calibrates device speed.

The agent measures this model at registration and the controller measures the same file
on its own host, so their latency ratio scales host measurements to the device. The file
is committed; ``python -m edgefleet.agent.reference --write`` regenerates it and
``--check`` fails when the committed file differs from the generator's output. Both need
the ``onnx`` package, which the agent itself never imports.

The bytes are reproducible: weights come from numpy's legacy ``RandomState``, whose stream
numpy keeps fixed across releases, and the IR version, opset and producer are pinned.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

__all__ = ["INPUT_SHAPE", "build_reference_model"]

REFERENCE_PATH = Path(__file__).resolve().parent / "reference.onnx"

INPUT_SHAPE = (1, 3, 64, 64)
# Opset 13 and IR version 7 load in every onnxruntime a device profile may pin (1.18 on).
OPSET = 13
IR_VERSION = 7
SEED = 20240601
# (input channels, output channels, stride) of each 3x3 convolution, about 16 M
# multiply-accumulates in all: long enough to time on a Raspberry Pi Zero 2 W, short enough
# that a one-second calibration still collects many runs on it.
_CONVOLUTIONS = ((3, 16, 1), (16, 32, 2), (32, 32, 1))
_CLASSES = 10


def build_reference_model() -> bytes:
    """Return the serialized reference model."""
    import onnx  # dev-only dependency
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.RandomState(SEED)
    nodes, initializers = [], []
    previous = "input"
    for index, (channels_in, channels_out, stride) in enumerate(_CONVOLUTIONS):
        fan_in = channels_in * 9
        weight = rng.standard_normal((channels_out, channels_in, 3, 3)) / np.sqrt(fan_in)
        bias = rng.standard_normal(channels_out) * 0.01
        initializers += [
            numpy_helper.from_array(weight.astype(np.float32), f"conv{index}.weight"),
            numpy_helper.from_array(bias.astype(np.float32), f"conv{index}.bias"),
        ]
        nodes += [
            helper.make_node(
                "Conv",
                [previous, f"conv{index}.weight", f"conv{index}.bias"],
                [f"conv{index}"],
                kernel_shape=[3, 3],
                pads=[1, 1, 1, 1],
                strides=[stride, stride],
            ),
            helper.make_node("Relu", [f"conv{index}"], [f"relu{index}"]),
        ]
        previous = f"relu{index}"

    channels = _CONVOLUTIONS[-1][1]
    fc_weight = rng.standard_normal((_CLASSES, channels)) / np.sqrt(channels)
    initializers += [
        numpy_helper.from_array(fc_weight.astype(np.float32), "fc.weight"),
        numpy_helper.from_array(np.zeros(_CLASSES, dtype=np.float32), "fc.bias"),
    ]
    nodes += [
        helper.make_node("GlobalAveragePool", [previous], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
        helper.make_node("Gemm", ["features", "fc.weight", "fc.bias"], ["logits"], transB=1),
    ]

    graph = helper.make_graph(
        nodes,
        "edgefleet_reference",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(INPUT_SHAPE))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, _CLASSES])],
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        producer_name="edgefleet.agent.reference",
        producer_version="1",
        opset_imports=[helper.make_opsetid("", OPSET)],
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model.SerializeToString()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help=f"write {REFERENCE_PATH}")
    action.add_argument("--check", action="store_true", help="exit 1 if the file is outdated")
    args = parser.parse_args(argv)

    data = build_reference_model()
    if args.write:
        REFERENCE_PATH.write_bytes(data)
        print(f"wrote {REFERENCE_PATH} ({len(data)} bytes)")  # noqa: T201
        return 0
    if not REFERENCE_PATH.is_file() or REFERENCE_PATH.read_bytes() != data:
        print(f"{REFERENCE_PATH} is outdated; run python -m edgefleet.agent.reference --write")  # noqa: T201
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
