"""The ``edgefleet controller serve`` command, run as a real process."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import httpx
import pytest
from controller_support import PROFILE_FIELDS

from edgefleet.protos.limits import CHANNEL_OPTIONS
from edgefleet.protos.v1 import fleet_pb2, fleet_pb2_grpc

_COMMAND = [sys.executable, "-m", "edgefleet", "controller", "serve"]
_API_TOKEN = [sys.executable, "-m", "edgefleet", "controller", "api-token"]


def api_token(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_API_TOKEN, *args], capture_output=True, text=True, timeout=60, check=False
    )


def create_api_token(data_dir: Path, name: str, *extra: str) -> str:
    result = api_token("create", name, "--data-dir", str(data_dir), *extra)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_serve_http_api_with_json_logs(tmp_path: Path) -> None:
    token = create_api_token(tmp_path, "ops")
    process = subprocess.Popen(
        [*_COMMAND, "--data-dir", str(tmp_path), "--grpc-port", "0", "--http-port", "0",
         "--log-format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        grpc_line = process.stdout.readline()
        http_line = process.stdout.readline()
        grpc_port = int(re.search(r"listening on 127\.0\.0\.1:(\d+)", grpc_line).group(1))
        match = re.search(r"HTTP API on (http://127\.0\.0\.1:\d+)/api/v1", http_line)
        assert match, http_line
        base_url = match.group(1)
        from edgefleet.profiles import parse_profile

        profile = parse_profile(PROFILE_FIELDS).to_proto()
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}", options=CHANNEL_OPTIONS) as channel:
            fleet_pb2_grpc.FleetServiceStub(channel).Register(
                fleet_pb2.RegisterRequest(device_id="dev-1", profile=profile), timeout=10
            )
        health = httpx.get(f"{base_url}/api/v1/health", timeout=10)
        anonymous = httpx.get(f"{base_url}/api/v1/devices", timeout=10)
        headers = {"Authorization": f"Bearer {token}"}
        devices = httpx.get(f"{base_url}/api/v1/devices", headers=headers, timeout=10).json()[
            "devices"
        ]
        # Revoked by another process while the controller runs.
        revoked = api_token("revoke", token.split(".")[1], "--data-dir", str(tmp_path))
        after_revoke = httpx.get(f"{base_url}/api/v1/devices", headers=headers, timeout=10)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
        process.wait()

    assert health.json()["status"] == "ok"
    assert anonymous.status_code == 401
    assert [device["device_id"] for device in devices] == ["dev-1"]
    assert revoked.returncode == 0, revoked.stderr
    assert after_revoke.status_code == 401
    assert "revoked" in after_revoke.json()["error"]["message"]
    assert process.returncode == 0
    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    assert lines, "no log lines"
    for entry in lines:
        assert {"time", "level", "logger", "message", "device_id", "deployment_id"} <= set(entry)
    assert not any("no unrevoked API token" in e["message"] for e in lines)
    rejections = [e for e in lines if e["logger"] == "edgefleet.controller.api.auth"]
    # The revoked token's rejection came from the same address within a minute, so it
    # is counted, not logged.
    assert len(rejections) == 1
    assert "missing Authorization header" in rejections[0]["message"]
    assert all(token.split(".")[2] not in e["message"] for e in lines)
    registered = [e for e in lines if e["message"].startswith("registered device dev-1")]
    assert registered[0]["device_id"] == "dev-1"
    assert any(e["message"].startswith("HTTP API listening") for e in lines)


@pytest.mark.parametrize(
    ("option", "value"),
    [("--http-port", "70000"), ("--grpc-port", "-5"), ("--enroll-port", "70000")],
)
def test_serve_rejects_bad_port(tmp_path: Path, option: str, value: str) -> None:
    result = subprocess.run(
        [*_COMMAND, "--data-dir", str(tmp_path), option, value],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip

    assert result.returncode == 2
    assert f"{option} {value} is not a port" in result.stderr


def test_serve_reports_http_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*_COMMAND, "--data-dir", str(tmp_path), "--grpc-port", "0",
             "--http-port", str(port)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    assert result.returncode == 1
    assert f"127.0.0.1:{port} (--http-host, --http-port)" in result.stderr
    assert "another process uses that port" in result.stderr
    # Nothing was planning, so shutting down abandons no plan.
    assert "a plan is still running" not in result.stderr


def test_serve_reports_unreachable_broker(tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    result = subprocess.run(
        [*_COMMAND, "--data-dir", str(tmp_path), "--grpc-port", "0",
         "--mqtt-url", f"mqtt://127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip

    assert result.returncode == 1
    assert f"broker mqtt://127.0.0.1:{port} (--mqtt-url)" in result.stderr
    assert "start the broker" in result.stderr


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


# -- api-token ----------------------------------------------------------------------


def test_serve_warns_without_api_token(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [*_COMMAND, "--data-dir", str(tmp_path), "--grpc-port", "0", "--http-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        http_line = [process.stdout.readline(), process.stdout.readline()][1]
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
        process.wait()

    assert "HTTP API on http://127.0.0.1:" in http_line
    assert "no unrevoked API token exists" in stderr
    assert f"api-token create NAME --data-dir {tmp_path}" in stderr


def test_api_token_create_list_revoke(tmp_path: Path) -> None:
    created = api_token("create", "prometheus", "--role", "read", "--data-dir", str(tmp_path))
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert re.fullmatch(r"efa1\.[0-9a-f]{16}\.[A-Za-z0-9_-]{43}", token)
    token_id, secret = token.split(".")[1:]
    assert f"API token {token_id} (prometheus, role read)" in created.stderr
    operator = create_api_token(tmp_path, "alice")

    listed = api_token("list", "--json", "--data-dir", str(tmp_path))
    table = api_token("list", "--data-dir", str(tmp_path))
    revoked = api_token("revoke", token_id, "--data-dir", str(tmp_path))
    after = json.loads(api_token("list", "--json", "--data-dir", str(tmp_path)).stdout)

    assert listed.returncode == 0, listed.stderr
    entries = {entry["id"]: entry for entry in json.loads(listed.stdout)}
    assert set(entries) == {token_id, operator.split(".")[1]}
    assert entries[token_id]["name"] == "prometheus"
    assert entries[token_id]["role"] == "read"
    assert entries[token_id]["revoked_at"] is None
    assert entries[operator.split(".")[1]]["role"] == "operator", "operator is the default"
    for output in (listed.stdout, listed.stderr, table.stdout, table.stderr):
        assert secret not in output
        assert operator.split(".")[2] not in output
    assert table.returncode == 0
    assert "prometheus" in table.stdout
    assert revoked.returncode == 0, revoked.stderr
    assert f"revoked API token {token_id} (prometheus)" in revoked.stdout
    assert {entry["id"]: entry for entry in after}[token_id]["revoked_at"] is not None


def test_api_token_revoke_errors(tmp_path: Path) -> None:
    token_id = create_api_token(tmp_path, "ci").split(".")[1]
    assert api_token("revoke", token_id, "--data-dir", str(tmp_path)).returncode == 0

    twice = api_token("revoke", token_id, "--data-dir", str(tmp_path))
    unknown = api_token("revoke", "0123456789abcdef", "--data-dir", str(tmp_path))
    malformed = api_token("revoke", "not-an-id", "--data-dir", str(tmp_path))

    assert twice.returncode == 1
    assert f"API token {token_id} (ci) was already revoked" in twice.stderr
    assert unknown.returncode == 1
    assert "no API token with id 0123456789abcdef" in unknown.stderr
    assert "api-token list" in unknown.stderr
    assert malformed.returncode == 1
    assert "invalid API token id 'not-an-id'" in malformed.stderr


def test_api_token_needs_existing_data_dir(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"

    created = api_token("create", "x", "--data-dir", str(missing))
    listed = api_token("list", "--data-dir", str(missing))
    revoked = api_token("revoke", "0123456789abcdef", "--data-dir", str(missing))

    assert created.returncode == 2
    assert f"data directory {str(missing)!r} does not exist" in created.stderr
    for result in (listed, revoked):
        assert result.returncode == 2
        assert "no controller database at" in result.stderr
        assert "--data-dir or --db of `controller serve`" in result.stderr
    assert not missing.exists(), "nothing created at a mistyped path"


def test_api_token_rejects_bad_name_and_role(tmp_path: Path) -> None:
    bad_name = api_token("create", "two words", "--data-dir", str(tmp_path))
    bad_role = api_token("create", "x", "--role", "admin", "--data-dir", str(tmp_path))

    assert bad_name.returncode == 1
    assert "invalid API token name 'two words'" in bad_name.stderr
    assert bad_role.returncode == 2
    assert "admin" in bad_role.stderr


def test_database_url_read_from_environment(tmp_path: Path) -> None:
    database = tmp_path / "elsewhere" / "fleet.db"
    environment = {**os.environ, "EDGEFLEET_DATABASE_URL": f"sqlite:///{database}"}

    created = subprocess.run(
        [*_API_TOKEN, "create", "env-token", "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=60, check=False, env=environment,
    )  # fmt: skip

    assert created.returncode == 0, created.stderr
    assert database.is_file()
    assert not (tmp_path / "data" / "edgefleet.db").exists()
    listed = api_token("list", "--db", f"sqlite:///{database}", "--json")
    assert listed.returncode == 0, listed.stderr
    assert "env-token" in listed.stdout
