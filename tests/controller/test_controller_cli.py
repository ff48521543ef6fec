"""The ``edgefleet controller serve`` command, run as a real process."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import grpc
from controller_support import PROFILE_FIELDS

from edgefleet.protos.limits import CHANNEL_OPTIONS
from edgefleet.protos.v1 import fleet_pb2, fleet_pb2_grpc

_COMMAND = [sys.executable, "-m", "edgefleet", "controller", "serve"]


def test_serve_rejects_http_option(tmp_path: Path) -> None:
    http = subprocess.run(
        [*_COMMAND, "--data-dir", str(tmp_path), "--http-port", "8080"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip

    assert http.returncode == 2
    assert "HTTP API is not available yet" in http.stderr


def test_serve_rejects_model_without_data(tmp_path: Path) -> None:
    result = subprocess.run(
        [*_COMMAND, "--data-dir", str(tmp_path), "--model", "model.onnx"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip

    assert result.returncode == 2
    assert "--data" in result.stderr


def test_serve_prints_port_and_stops_on_sigterm(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [*_COMMAND, "--data-dir", str(tmp_path), "--grpc-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        assert match, line
        port = int(match.group(1))
        from edgefleet.profiles import parse_profile

        profile = parse_profile(PROFILE_FIELDS).to_proto()
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as channel:
            stub = fleet_pb2_grpc.FleetServiceStub(channel)
            response = stub.Register(
                fleet_pb2.RegisterRequest(device_id="dev-1", profile=profile), timeout=10
            )
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=30)
    finally:
        process.kill()
        process.wait()

    assert response.device_id == "dev-1"
    assert returncode == 0
    assert (tmp_path / "edgefleet.db").is_file()


def test_cli_module_imports_no_heavy_packages() -> None:
    code = (
        "import sys, edgefleet.controller.cli\n"
        "heavy = [m for m in ('sqlalchemy', 'grpc', 'torch', 'onnx', 'alembic') "
        "if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )

    assert result.stdout.strip() == ""
