"""A device whose clock reads 1970 enrolls, connects over mutual TLS and applies a signed model.

The agent runs as a child process under libfaketime, so gRPC's TLS stack, Python and
onnxruntime all see 1970-01-02 on the device side, while the controller runs on the real
clock in this process.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from controller_support import PROFILE_FIELDS, wait_for
from ladder_support import linear_variant, store_ladder

from edgefleet.controller.models import DeploymentState, DeviceState
from edgefleet.controller.service import Controller
from edgefleet.profiles import DeviceProfile

DEVICE_TIME = "@1970-01-02 00:00:00"
FAKETIME_HINT = (
    "libfaketime is not installed, and the device clock test needs it; install it with "
    "`apt-get install -y faketime` (make test does this)"
)


def _faketime_environment() -> dict[str, str]:
    libraries = glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1")
    if not libraries:
        pytest.fail(FAKETIME_HINT)
    environment = dict(os.environ)
    environment.update(
        LD_PRELOAD=libraries[0],
        FAKETIME=DEVICE_TIME,
        # Only the wall clock is the device's broken one; timers and timeouts keep working.
        FAKETIME_DONT_FAKE_MONOTONIC="1",
    )
    return environment


def _write_profile(path: Path) -> Path:
    lines = []
    for key, value in PROFILE_FIELDS.items():
        if isinstance(value, str):
            lines.append(f'{key} = "{value}"')
        elif isinstance(value, list):
            lines.append(f"{key} = [{', '.join(repr(item) for item in value)}]".replace("'", '"'))
        else:
            lines.append(f"{key} = {value}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_device_at_1970_enrolls_connects_and_deploys(
    controller: Controller, profile: DeviceProfile, tmp_path: Path
) -> None:
    port = controller.serve_grpc(host="127.0.0.1", port=0, tls=True, enroll_port=0)
    variant_id = store_ladder(controller, profile, *linear_variant(4, scale=2.0)).variant_id
    token = controller.create_enrollment_token(ttl=timedelta(minutes=5))
    environment = _faketime_environment()
    state_dir = tmp_path / "device"
    edgefleet = [sys.executable, "-m", "edgefleet"]

    enrolled = subprocess.run(
        [
            *edgefleet, "enroll",
            "--controller", f"127.0.0.1:{controller.enroll_port}",
            "--token", token.token,
            "--device-id", "old-clock",
            "--state-dir", str(state_dir),
        ],
        env=environment, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert enrolled.returncode == 0, enrolled.stderr

    log_path = tmp_path / "agent.log"
    with log_path.open("wb") as log:
        agent = subprocess.Popen(
            [
                *edgefleet, "agent", "run",
                "--controller", f"127.0.0.1:{port}",
                "--profile", str(_write_profile(tmp_path / "board.toml")),
                "--device-id", "old-clock",
                "--state-dir", str(state_dir),
            ],
            env=environment, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_for(
                lambda: (
                    (device := controller.registry.find_device("old-clock")) is not None
                    and device.current_variant_id == variant_id
                ),
                timeout_s=90,
            )
            device = controller.registry.get_device("old-clock")
        finally:
            agent.terminate()
            agent.wait(timeout=30)

    agent_log = log_path.read_text(errors="replace")
    assert agent_log.startswith("1970-01-02"), agent_log[:200]
    assert "manifest rejected" not in agent_log
    assert device.state in (DeviceState.ONLINE, DeviceState.OFFLINE)
    deployment = controller.registry.latest_deployment("old-clock")
    assert deployment is not None
    assert deployment.state is DeploymentState.ACTIVE
    # The agent checked the signed manifest (it records the version it accepted), and
    # its expiry check ran on the controller's time, not on 1970.
    state = json.loads((state_dir / "state.json").read_text())
    assert state["manifest_version"] == deployment.manifest_version
    assert state["time_floor_ms"] > 1_700_000_000_000
