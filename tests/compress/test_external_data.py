"""Models that keep their weights in an external-data file beside the ``.onnx`` file."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import typer
from compress_helpers import PROFILES_DIR
from typer.testing import CliRunner

from edgefleet.client.commands import _one_file_model
from edgefleet.compress import export_onnx, load_onnx_model, save_dataset_npz
from edgefleet.compress.cli import compress_command
from edgefleet.compress.errors import ModelLoadError
from edgefleet.compress.runtime import create_session, run_batched
from edgefleet.onnx_files import external_data_locations, inline_external_data


@pytest.fixture
def split_model(small_cnn, small_digits, tmp_path):
    """The small CNN saved as ``split/cnn.onnx`` with its weights in ``cnn.onnx.data``."""
    exported = export_onnx(small_cnn, small_digits.x_val, tmp_path / "cnn.onnx")
    folder = tmp_path / "split"
    folder.mkdir()
    path = folder / "cnn.onnx"
    onnx.save(
        onnx.load(str(exported)),
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="cnn.onnx.data",
        size_threshold=0,
    )
    return path, exported


def test_inline_writes_one_file(split_model, small_digits, tmp_path):
    path, exported = split_model

    single = inline_external_data(path, tmp_path / "inlined")

    assert single == tmp_path / "inlined" / "cnn.onnx"
    assert external_data_locations(onnx.load(str(single), load_external_data=False)) == []
    assert not (tmp_path / "inlined" / "cnn.onnx.data").exists()
    samples = small_digits.x_val[:16]
    expected = run_batched(create_session(exported, threads=1), samples)
    actual = run_batched(create_session(single, threads=1), samples)
    np.testing.assert_array_equal(actual, expected)


def test_inline_skips_one_file_model(split_model, tmp_path):
    _, exported = split_model

    assert inline_external_data(exported, tmp_path / "inlined") is None
    assert not (tmp_path / "inlined").exists()


def test_inline_names_missing_data_file(split_model, tmp_path):
    path, _ = split_model
    (path.parent / "cnn.onnx.data").unlink()

    with pytest.raises(ModelLoadError) as caught:
        inline_external_data(path, tmp_path / "inlined", error=ModelLoadError)

    message = str(caught.value)
    assert "cnn.onnx keeps its weights in a separate file (cnn.onnx.data)" in message
    assert "save_as_external_data=False" in message


def test_load_without_inline_dir_rejects(split_model):
    path, _ = split_model

    with pytest.raises(ModelLoadError) as caught:
        load_onnx_model(path)

    message = str(caught.value)
    assert "keeps its weights in a separate file (cnn.onnx.data)" in message
    assert "onnx.save(onnx.load(path), out_path, save_as_external_data=False)" in message
    assert "torch.onnx.export" not in message


def test_register_uploads_inlined_copy(split_model, tmp_path):
    path, _ = split_model

    upload = _one_file_model(path, tmp_path / "scratch")

    assert upload.name == "cnn.onnx"
    assert upload.parent == tmp_path / "scratch"
    assert external_data_locations(onnx.load(str(upload), load_external_data=False)) == []


def test_cli_compresses_external_data_model(split_model, small_digits, tmp_path):
    path, _ = split_model
    data = save_dataset_npz(small_digits, tmp_path / "digits.npz")
    out = tmp_path / "out"
    app = typer.Typer()
    app.command()(compress_command)
    profile = PROFILES_DIR / "raspberry-pi-4b.toml"

    result = CliRunner().invoke(
        app,
        [str(path), "--data", str(data), "--profile", str(profile), "--out", str(out), "--json"],
    )

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["baseline"]["name"] == "fp32"
    assert (out / "source" / "cnn.onnx").is_file()
