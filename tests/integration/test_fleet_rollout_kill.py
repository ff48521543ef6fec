"""A controller process killed with SIGKILL mid-rollout, then started again on its database.

Unlike the in-process restart in ``test_fleet_rollouts``, nothing shuts down cleanly here.
Open sessions, the rollout thread and the database connections all end with the process. A
new ``edgefleet controller serve`` process must finish the rollout from what the database
contains, and from what the agents report when they reconnect. It runs on SQLite and, killed
while deploying, on a real PostgreSQL server.
"""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fleet_support import AgentProcess, FleetModel, wait_for

pytestmark = pytest.mark.slow

# Engine steps every 0.2 s and an idle policy, as in ``rollout_fleet_support.rollout_config``.
CONTROLLER_TOML = """\
[controller]
telemetry_interval_s = 0.5
host_calibration_duration_s = 0.2
shutdown_grace_s = 1.0
rollout_check_interval_s = 0.2

[policy]
breach_samples = 3
headroom_samples = 1000
cooldown_s = 0.0
"""

_GRPC_LINE = re.compile(r"listening on 127\.0\.0\.1:(\d+)")
_HTTP_LINE = re.compile(r"HTTP API on (http://127\.0\.0\.1:\d+/api/v1)")


class ControllerProcess:
    """``edgefleet controller serve`` as a child process with its gRPC port and HTTP API URL."""

    def __init__(self, args: list[str], log_path: Path, *, token: str) -> None:
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "edgefleet", "controller", "serve", *args],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        lines = self._read_stdout_lines(count=2, timeout_s=180)
        grpc_match = _GRPC_LINE.search(lines[0])
        http_match = _HTTP_LINE.search(lines[1])
        assert grpc_match, f"no gRPC address in {lines[0]!r}; log: {log_path}"
        assert http_match, f"no HTTP API address in {lines[1]!r}; log: {log_path}"
        self.grpc_port = int(grpc_match.group(1))
        self.api = httpx.Client(
            base_url=http_match.group(1),
            timeout=10,
            headers={"Authorization": f"Bearer {token}"},
        )

    def _read_stdout_lines(self, *, count: int, timeout_s: float) -> list[str]:
        # readline blocks, so a thread reads and the test waits with a deadline.
        assert self.process.stdout is not None
        lines: queue.Queue[str] = queue.Queue()
        stdout = self.process.stdout

        def read() -> None:
            for _ in range(count):
                lines.put(stdout.readline())

        threading.Thread(target=read, daemon=True).start()
        try:
            return [lines.get(timeout=timeout_s) for _ in range(count)]
        except queue.Empty:
            pytest.fail(f"controller printed no address within {timeout_s:.0f} s")

    def get(self, path: str) -> dict:
        response = self.api.get(path)
        assert response.status_code == 200, response.text
        return response.json()

    def kill(self) -> int:
        """Kill the process with SIGKILL, so no shutdown code runs, and return its exit code."""
        self.process.send_signal(signal.SIGKILL)
        self.api.close()
        return self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.api.close()
        self._log.close()


@pytest.fixture
def start_controller_process(tmp_path: Path) -> Iterator[Callable[..., ControllerProcess]]:
    started: list[ControllerProcess] = []

    def start(*args: str, token: str) -> ControllerProcess:
        controller = ControllerProcess(list(args), tmp_path / "controller.log", token=token)
        started.append(controller)
        return controller

    yield start
    for controller in started:
        controller.stop()


def serving_variant(agent: AgentProcess) -> str | None:
    health = agent.health()
    return health.get("variant_id") if health else None


def other_variant(controller: ControllerProcess, serving: str) -> str:
    """Return a ladder rung other than ``serving``, or else the most accurate other variant.

    Host latencies measured under load can leave a ladder of one rung, and a rollout may
    name any variant of the profile.
    """
    ladder = controller.get("/devices/kill-0/ladder")["ladder"]
    rungs = [rung["variant_id"] for rung in ladder if rung["variant_id"] != serving]
    if rungs:
        return rungs[0]
    model_id = controller.get("/models")["active_model_id"]
    profiles = controller.get(f"/models/{model_id}/variants")["profiles"]
    variants = [
        variant["variant_id"]
        for profile in profiles
        if profile["profile_name"] == "kill-board"
        for variant in profile["variants"]
        if variant["variant_id"] != serving
    ]
    assert variants, f"the model has no variant for kill-board besides {serving}"
    return variants[0]


def rollout_of(controller: ControllerProcess, rollout_id: str) -> dict:
    return controller.get(f"/rollouts/{rollout_id}")


@pytest.mark.parametrize(
    ("kill_during", "backend"),
    [("deploying", "sqlite"), ("soaking", "sqlite"), ("deploying", "postgresql")],
)
def test_killed_controller_finishes_rollout(
    kill_during: str,
    backend: str,
    fleet_model: FleetModel,
    start_controller_process: Callable[..., ControllerProcess],
    start_agent: Callable[..., AgentProcess],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    data_dir = tmp_path / "controller"
    config_path = tmp_path / "controller.toml"
    config_path.write_text(CONTROLLER_TOML)
    url = (
        request.getfixturevalue("postgres_url")
        if backend == "postgresql"
        else f"sqlite:///{data_dir / 'fleet.db'}"
    )
    database = ["--data-dir", str(data_dir), "--db", url]
    common = [*database, "--config", str(config_path), "--http-port", "0"]
    # Created before the first start; the restarted controller reads it from the database.
    token = subprocess.run(
        [sys.executable, "-m", "edgefleet", "controller", "api-token", "create", "test",
         *database],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.strip()  # fmt: skip
    first = start_controller_process(
        *common, "--grpc-port", "0",
        "--model", str(fleet_model.onnx_path), "--data", str(fleet_model.data_path),
        token=token,
    )  # fmt: skip
    agents = [
        start_agent(f"kill-{i}", first.grpc_port, profile_name="kill-board") for i in range(3)
    ]
    for agent in agents:
        wait_for(
            lambda a=agent: serving_variant(a), timeout_s=180, what=f"{agent.device_id} to serve"
        )
    before = {agent.device_id: serving_variant(agent) for agent in agents}
    assert len(set(before.values())) == 1, before
    target = other_variant(first, before["kill-0"])

    # A 6 s soak leaves time to see the canary wave soaking and to kill the controller in it.
    response = first.api.post(
        "/rollouts",
        json={
            "target": "all",
            "waves": "1,100%",
            "variants": {"kill-board": target},
            "gates": {"soak_s": 6.0},
        },
    )
    assert response.status_code == 201, response.text
    rollout_id = response.json()["rollout_id"]
    if kill_during == "soaking":
        wait_for(
            lambda: rollout_of(first, rollout_id)["waves"][0]["state"] == "soaking",
            timeout_s=120,
            what="the canary wave to soak",
        )
    at_kill = rollout_of(first, rollout_id)
    assert at_kill["state"] == "running"
    assert at_kill["waves"][0]["state"] == kill_during
    assert first.kill() == -signal.SIGKILL

    second = start_controller_process(*common, "--grpc-port", str(first.grpc_port), token=token)
    assert second.grpc_port == first.grpc_port
    assert rollout_of(second, rollout_id)["state"] == "running"
    done = wait_for(
        lambda: (
            (r := rollout_of(second, rollout_id))["state"] == "succeeded" and r["settled"] and r
        ),
        timeout_s=180,
        what=f"rollout {rollout_id} to succeed after the restart",
    )

    assert [wave["state"] for wave in done["waves"]] == ["passed", "passed"]
    assert done["waves"][0]["device_ids"] == ["kill-0"]
    devices = {device["device_id"]: device for device in done["devices"]}
    assert sorted(devices) == ["kill-0", "kill-1", "kill-2"]
    for agent in agents:
        device = devices[agent.device_id]
        assert device["state"] == "updated", device
        assert device["variant_id"] == target
        assert device["previous_variant_id"] == before[agent.device_id]
        assert serving_variant(agent) == target
        assert second.get(f"/devices/{agent.device_id}")["current_variant_id"] == target
