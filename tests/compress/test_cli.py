from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import typer
from compress_helpers import PROFILES_DIR, REPO_ROOT
from typer.testing import CliRunner

from edgefleet.compress import save_dataset_npz
from edgefleet.compress.cli import compress_command

FACTORY = f"{REPO_ROOT / 'examples' / 'digits_model.py'}:build_untrained_model"
PROFILE = PROFILES_DIR / "raspberry-pi-4b.toml"


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    application = typer.Typer()
    application.command()(compress_command)
    return application


@pytest.fixture(scope="module")
def tiny_npz(small_digits, tmp_path_factory):
    return save_dataset_npz(small_digits, tmp_path_factory.mktemp("data") / "digits.npz")


def _invoke(app, *args):
    return CliRunner().invoke(app, [str(arg) for arg in args])


SMALL_FACTORY = f"{REPO_ROOT / 'tests' / 'compress' / 'compress_helpers.py'}:small_model"


def test_cli_compress_prints_json_report(app, tiny_npz, small_cnn_weights, tmp_path):
    out = tmp_path / "out"
    result = _invoke(
        app,
        SMALL_FACTORY,
        "--data",
        tiny_npz,
        "--profile",
        PROFILE,
        "--out",
        out,
        "--json",
        "--weights",
        small_cnn_weights,
        "--latency-scale",
        "2.5",
    )

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report == json.loads((out / "report.json").read_text())
    assert report["latency_scale"] == 2.5
    entries = [report["baseline"], *report["variants"]]
    assert len(entries) == 8
    for entry in entries:
        for key in ("recipe", "accuracy", "size_bytes", "latency_p95_ms", "peak_memory_mb"):
            assert key in entry
        assert isinstance(entry["meets_budget"], bool)
        assert (out / f"{entry['variant_id']}.onnx").is_file()
    assert report["chosen"] in {entry["variant_id"] for entry in entries}
    assert report["baseline"]["recipe"] == []


def test_cli_prints_table_for_onnx_model(app, tiny_npz, small_cnn, small_digits, tmp_path):
    from edgefleet.compress import export_onnx

    model = export_onnx(small_cnn, small_digits.x_val, tmp_path / "model.onnx")
    result = _invoke(app, model, "--data", tiny_npz, "--profile", PROFILE, "--out", tmp_path)

    assert result.exit_code == 0, result.output
    assert "raspberry-pi-4b" in result.stdout
    assert "chose" in result.stdout
    assert "only ONNX-stage recipes" in result.stdout


def test_cli_table_keeps_numbers_in_pipe(app, tiny_npz, small_cnn, small_digits, tmp_path):
    from edgefleet.compress import export_onnx

    model = export_onnx(small_cnn, small_digits.x_val, tmp_path / "model.onnx")
    result = _invoke(app, model, "--data", tiny_npz, "--profile", PROFILE, "--out", tmp_path)

    assert result.exit_code == 0, result.output
    baseline = json.loads((tmp_path / "report.json").read_text())["baseline"]
    rows = [line for line in result.stdout.splitlines() if baseline["variant_id"] in line]
    assert rows, result.stdout
    assert f"{baseline['accuracy']:.4f}" in rows[0]
    assert f"{baseline['latency_p95_ms']:.3f}" in rows[0]
    assert f"{baseline['peak_memory_mb']:.1f}" in rows[0]
    assert f"{baseline['size_bytes'] / 1024:.1f}" in rows[0]


def test_cli_exits_3_when_nothing_fits(app, tiny_npz, small_cnn, small_digits, tmp_path):
    from edgefleet.compress import export_onnx

    model = export_onnx(small_cnn, small_digits.x_val, tmp_path / "model.onnx")
    profile = tmp_path / "tiny-budget.toml"
    profile.write_text(
        PROFILE.read_text().replace("latency_budget_ms = 20.0", "latency_budget_ms = 0.0001")
    )
    out = tmp_path / "out"
    result = _invoke(app, model, "--data", tiny_npz, "--profile", profile, "--out", out)

    assert result.exit_code == 3, result.output
    assert "no variant meets the budget of raspberry-pi-4b" in result.stdout
    assert "error: no variant meets the budget of raspberry-pi-4b; the variants and " in (
        result.stderr
    )
    assert json.loads((out / "report.json").read_text())["chosen"] is None


def test_example_factory_builds_digits_cnn():
    from edgefleet.compress import DigitsCNN, load_torch_model

    assert isinstance(load_torch_model(FACTORY), DigitsCNN)


def _write_npz(path, **arrays):
    with path.open("wb") as handle:
        np.savez(handle, **arrays)
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing_model", "model file not found"),
        ("not_onnx", "is not a valid ONNX model"),
        ("factory_missing", "factory 'no_such_factory' not found"),
        ("missing_data", "dataset file not found"),
        ("npz_missing_keys", "missing array(s) y_val"),
        ("npz_wrong_shape", "rejects dataset samples of shape (3, 3)"),
        ("bad_profile", "unknown cpu_arch 'sparc'"),
        ("bad_scale", "invalid --latency-scale"),
        ("weights_for_onnx", "--weights applies to torch factories"),
        ("out_is_file", "is a file; pass a folder"),
    ],
)
def test_cli_rejects_bad_input(app, case, message, tiny_npz, tmp_path):
    model, data, profile, extra = FACTORY, tiny_npz, PROFILE, []
    if case == "missing_model":
        model = str(tmp_path / "absent.py") + ":build_model"
    elif case == "not_onnx":
        fake = tmp_path / "fake.onnx"
        fake.write_text("not onnx")
        model = str(fake)
    elif case == "factory_missing":
        model = FACTORY.replace("build_untrained_model", "no_such_factory")
    elif case == "missing_data":
        data = tmp_path / "absent.npz"
    elif case == "npz_missing_keys":
        x = np.zeros((4, 1, 8, 8), np.float32)
        data = _write_npz(tmp_path / "d.npz", x_train=x, y_train=np.zeros(4, np.int64), x_val=x)
    elif case == "npz_wrong_shape":
        x = np.zeros((4, 3, 3), np.float32)
        y = np.zeros(4, np.int64)
        data = _write_npz(tmp_path / "d.npz", x_train=x, y_train=y, x_val=x, y_val=y)
    elif case == "bad_profile":
        profile = tmp_path / "bad.toml"
        profile.write_text(PROFILE.read_text().replace('"aarch64"', '"sparc"'))
    elif case == "bad_scale":
        extra = ["--latency-scale", "-1"]
    elif case == "weights_for_onnx":
        model = str(REPO_ROOT / "missing.onnx")
        extra = ["--weights", str(tmp_path / "w.pt")]
    out = tmp_path
    if case == "out_is_file":
        out = tmp_path / "report.txt"
        out.write_text("")

    result = _invoke(app, model, "--data", data, "--profile", profile, "--out", out, *extra)

    assert result.exit_code == 2, result.output
    assert message in result.stderr


def test_cli_module_imports_no_heavy_packages():
    code = (
        "import sys, edgefleet.compress.cli\n"
        "heavy = [m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert completed.stdout.strip() == ""
