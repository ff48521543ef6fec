"""``edgefleet register`` with a model whose weights sit in an external-data file."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest
from http_fleet_support import HttpFleet, get_json, start_http_fleet

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpFleet]:
    fleet = start_http_fleet(tmp_path_factory.mktemp("register-split"), devices={})
    yield fleet
    fleet.stop()


def _register(fleet: HttpFleet, model: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "edgefleet",
        "register",
        str(model),
        "--data",
        str(fleet.workdir / "digits.npz"),
        "--controller-url",
        fleet.url,
        "--token",
        fleet.operator_token,
        *extra,
    ]
    environment = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        command, capture_output=True, text=True, timeout=120, env=environment, check=False
    )


def _save_split(fleet: HttpFleet, folder: Path) -> Path:
    folder.mkdir()
    path = folder / "mlp_split.onnx"
    onnx.save(
        onnx.load(str(fleet.workdir / "digits_mlp.onnx")),
        str(path),
        save_as_external_data=True,
        location="mlp_split.onnx.data",
        size_threshold=0,
    )
    return path


def test_register_uploads_external_data(fleet, tmp_path):
    path = _save_split(fleet, tmp_path / "split")

    result = _register(fleet, path, "--json")

    assert result.returncode == 0, result.stderr
    models = get_json(f"{fleet.url}/api/v1/models", token=fleet.operator_token)
    names = {model["name"]: model for model in models["models"]}
    assert "mlp_split" in names
    assert models["active_model_id"] == names["mlp_split"]["model_id"]


def test_register_names_missing_data_file(fleet, tmp_path):
    path = _save_split(fleet, tmp_path / "split")
    (path.parent / "mlp_split.onnx.data").unlink()

    result = _register(fleet, path)

    assert result.returncode == 2
    assert "keeps its weights in a separate file (mlp_split.onnx.data)" in result.stderr
    assert "save_as_external_data=False" in result.stderr
    assert "torch.onnx.export" not in result.stderr
    assert "Traceback" not in result.stderr
