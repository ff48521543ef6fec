from __future__ import annotations

import threading

import numpy as np
import pytest

from edgefleet.agent.errors import InferenceInputError, ModelLoadError, NoModelError, SelfTestError
from edgefleet.agent.runtime import ModelRuntime


def test_runtime_loads_and_serves(affine_variant):
    path, manifest = affine_variant(scale=2.0, bias=1.0)
    runtime = ModelRuntime(threads=1)

    runtime.load(path, manifest)
    result = runtime.infer({"x": np.ones((3, 4), dtype=np.float32)})

    assert result.variant_id == manifest.variant_id
    np.testing.assert_allclose(result.outputs["y"], np.full((3, 4), 3.0))
    assert result.latency_ms > 0


def test_runtime_infer_before_model_raises():
    runtime = ModelRuntime(threads=1)
    with pytest.raises(NoModelError):
        runtime.infer({"x": np.ones((1, 4), dtype=np.float32)})


def test_runtime_swap_keeps_previous(affine_variant):
    first_path, first = affine_variant(scale=2.0, bias=1.0)
    second_path, second = affine_variant(scale=-1.0, bias=0.0)
    runtime = ModelRuntime(threads=1)
    runtime.load(first_path, first)

    replaced = runtime.activate(runtime.prepare(second_path, second))

    assert replaced is not None
    assert replaced.variant_id == first.variant_id
    assert runtime.variant_id == second.variant_id
    restored = runtime.roll_back()
    assert restored.variant_id == first.variant_id
    assert runtime.variant_id == first.variant_id


def test_runtime_rejects_non_onnx_file(affine_variant, tmp_path):
    good_path, good = affine_variant()
    _, bad_manifest = affine_variant(scale=5.0)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not an onnx model")
    runtime = ModelRuntime(threads=1)
    runtime.load(good_path, good)

    with pytest.raises(ModelLoadError, match="cannot load"):
        runtime.load(garbage, bad_manifest)

    assert runtime.variant_id == good.variant_id
    result = runtime.infer({"x": np.zeros((1, 4), dtype=np.float32)})
    np.testing.assert_allclose(result.outputs["y"], np.ones((1, 4)))


def test_runtime_rejects_failing_self_test(affine_variant):
    good_path, good = affine_variant()
    bad_path, bad = affine_variant(scale=3.0, expected_shift=0.5)
    runtime = ModelRuntime(threads=1)
    runtime.load(good_path, good)

    with pytest.raises(SelfTestError, match="differs from the expected output"):
        runtime.load(bad_path, bad)

    assert runtime.variant_id == good.variant_id


def test_runtime_rejects_manifest_without_self_test(affine_variant):
    path, manifest = affine_variant()
    manifest.ClearField("self_test")
    with pytest.raises(SelfTestError, match="no self-test"):
        ModelRuntime(threads=1).load(path, manifest)


def test_runtime_rejects_manifest_with_other_inputs(affine_variant):
    path, manifest = affine_variant()
    manifest.inputs[0].name = "image"
    with pytest.raises(ModelLoadError, match="manifest inputs"):
        ModelRuntime(threads=1).load(path, manifest)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({}, "missing input 'x'"),
        ({"x": np.ones((1, 4)), "z": np.ones(1)}, "unknown input"),
        ({"x": np.ones((1, 5), dtype=np.float32)}, r"expected \[N, 4\]"),
        ({"x": np.ones(4, dtype=np.float32)}, r"has shape \[4\]"),
        ({"x": np.array([["a", "b", "c", "d"]])}, "expected float32"),
    ],
)
def test_runtime_infer_rejects_bad_inputs(affine_variant, inputs, message):
    path, manifest = affine_variant()
    runtime = ModelRuntime(threads=1)
    runtime.load(path, manifest)
    with pytest.raises(InferenceInputError, match=message):
        runtime.infer(inputs)


def test_runtime_infer_casts_numbers(affine_variant):
    path, manifest = affine_variant(scale=1.0, bias=0.0)
    runtime = ModelRuntime(threads=1)
    runtime.load(path, manifest)

    from_float64 = runtime.infer({"x": np.full((1, 4), 0.5)})
    from_int = runtime.infer({"x": np.full((1, 4), 2)})

    np.testing.assert_allclose(from_float64.outputs["y"], np.full((1, 4), 0.5))
    np.testing.assert_allclose(from_int.outputs["y"], np.full((1, 4), 2.0))


def test_runtime_serves_during_concurrent_swaps(affine_variant):
    first_path, first = affine_variant(scale=1.0, bias=0.0)
    second_path, second = affine_variant(scale=1.0, bias=0.0, variant_id="second")
    runtime = ModelRuntime(threads=1)
    runtime.load(first_path, first)
    errors: list[Exception] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                runtime.infer({"x": np.ones((2, 4), dtype=np.float32)})
            except Exception as exc:  # collected for the assert below
                errors.append(exc)

    workers = [threading.Thread(target=serve) for _ in range(4)]
    for worker in workers:
        worker.start()
    for _ in range(10):
        runtime.load(second_path, second)
        runtime.load(first_path, first)
    stop.set()
    for worker in workers:
        worker.join()

    assert errors == []
    assert runtime.latency.take_window().requests > 0


def test_runtime_records_per_sample_latency(affine_variant):
    runtime = ModelRuntime(threads=1)
    path, manifest = affine_variant(scale=2.0, bias=1.0)
    runtime.load(path, manifest)
    batch = np.ones((256, 4), dtype=np.float32)

    result = runtime.infer({"x": batch})
    window = runtime.latency.take_window()

    assert window.requests == 1
    assert window.p50_ms == pytest.approx(result.latency_ms / 256)
