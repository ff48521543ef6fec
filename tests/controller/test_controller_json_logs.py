"""``edgefleet agent run --log-format json`` against a real controller over gRPC loopback."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from controller_support import PROFILE_FIELDS, store_fake_ladder

from edgefleet.controller.service import Controller
from edgefleet.profiles import DeviceProfile


def write_profile_toml(path: Path) -> Path:
    lines = []
    for key, value in PROFILE_FIELDS.items():
        lines.append(f"{key} = {json.dumps(value)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_agent_json_logs_name_device_and_deployment(
    tmp_path: Path, controller: Controller, profile: DeviceProfile, grpc_port: int
) -> None:
    # The fake ladder's artifacts are not ONNX, so the agent's deployment fails to load:
    # the failure is logged with the deployment id.
    _, ladder = store_fake_ladder(controller, profile)
    stderr_path = tmp_path / "agent.err"
    command = [
        sys.executable, "-m", "edgefleet.agent", "run",
        "--controller", f"127.0.0.1:{grpc_port}",
        "--profile", str(write_profile_toml(tmp_path / "board.toml")),
        "--device-id", "json-dev",
        "--state-dir", str(tmp_path / "state"),
        "--telemetry-interval", "0.5",
        "--log-format", "json",
    ]  # fmt: skip
    with stderr_path.open("w") as stderr:
        agent = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if '"deployment_id": "' in stderr_path.read_text():
                    break
                time.sleep(0.2)
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=30)
        finally:
            agent.kill()
            agent.wait()

    lines = [line for line in stderr_path.read_text().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]
    assert entries, "the agent wrote no log lines"
    for entry in entries:
        assert entry["device_id"] == "json-dev"
        assert {"time", "level", "logger", "message", "deployment_id", "rollout_id"} <= set(entry)
    failed = [e for e in entries if e["deployment_id"] and e["level"] == "ERROR"]
    assert failed, "no ERROR line names the failed deployment"
    deployment = controller.registry.find_deployment(failed[0]["deployment_id"])
    assert deployment is not None
    assert deployment.device_id == "json-dev"
    assert deployment.variant_id == ladder[0]
