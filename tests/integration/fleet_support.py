"""Fixtures for whole-fleet tests: a real controller on loopback and real agent processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgefleet.compress import Dataset, digits_dataset, export_onnx, save_dataset_npz
from edgefleet.compress.training import train_classifier
from edgefleet.controller.config import ControllerConfig
from edgefleet.controller.policy import PolicyConfig
from edgefleet.controller.service import Controller

# Hidden width of the test MLP: 64*2048 + 2048*512 float32 weights make the fp32 ONNX
# file about 4.7 MB, over gRPC's default 4 MiB message limit.
HIDDEN = (2048, 512)


def build_digits_mlp() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, HIDDEN[0]),
        nn.ReLU(),
        nn.Linear(HIDDEN[0], HIDDEN[1]),
        nn.ReLU(),
        nn.Linear(HIDDEN[1], 10),
    )


@dataclass(frozen=True)
class FleetModel:
    """An ONNX model over 4 MiB with its dataset, as files the controller registers."""

    onnx_path: Path
    data_path: Path
    dataset: Dataset


@pytest.fixture(scope="session")
def fleet_model(tmp_path_factory: pytest.TempPathFactory) -> FleetModel:
    folder = tmp_path_factory.mktemp("fleet-model")
    dataset = digits_dataset(seed=0)
    torch.manual_seed(0)
    module = build_digits_mlp()
    train_classifier(module, dataset, epochs=3, seed=0, learning_rate=1e-3)
    module.eval()
    onnx_path = export_onnx(module, dataset.x_val[:1], folder / "digits_mlp.onnx")
    data_path = save_dataset_npz(dataset, folder / "digits.npz")
    return FleetModel(onnx_path=onnx_path, data_path=data_path, dataset=dataset)


def write_profile(path: Path, name: str, *, latency_budget_ms: float = 50.0) -> Path:
    path.write_text(
        f'name = "{name}"\n'
        'cpu_arch = "x86_64"\n'
        "cpu_cores = 1\n"
        'cpu_flags = ["avx2", "fma"]\n'
        "memory_mb = 4096\n"
        "model_memory_budget_mb = 256\n"
        f"latency_budget_ms = {latency_budget_ms}\n"
    )
    return path


def fleet_config(**policy: object) -> ControllerConfig:
    defaults: dict[str, object] = {"breach_samples": 3, "headroom_samples": 1000, "cooldown_s": 0.0}
    return ControllerConfig(
        telemetry_interval_s=0.5,
        host_calibration_duration_s=0.2,
        shutdown_grace_s=1.0,
        policy=PolicyConfig(**{**defaults, **policy}),
    )


class FleetController:
    """A ``Controller`` serving gRPC on a fixed loopback port, restartable on that port."""

    def __init__(self, data_dir: Path, config: ControllerConfig) -> None:
        self.data_dir = data_dir
        self.config = config
        self.port = 0
        self.controller: Controller | None = None

    def start(self) -> Controller:
        controller = Controller(self.config, data_dir=self.data_dir)
        controller.start()
        self.port = controller.serve_grpc(host="127.0.0.1", port=self.port)
        self.controller = controller
        return controller

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.shutdown(grace_s=0.5)
            self.controller = None


@pytest.fixture
def start_controller(tmp_path: Path) -> Iterator[Callable[..., FleetController]]:
    started: list[FleetController] = []

    def start(config: ControllerConfig | None = None) -> FleetController:
        fleet = FleetController(tmp_path / "controller", config or fleet_config())
        fleet.start()
        started.append(fleet)
        return fleet

    yield start
    for fleet in started:
        fleet.stop()


class AgentProcess:
    """``edgefleet agent run`` as a child process, with helpers to reach its local API."""

    def __init__(
        self,
        device_id: str,
        profile: Path,
        state_dir: Path,
        port: int,
        *,
        connect_args: list[str] | None = None,
    ) -> None:
        self.device_id = device_id
        self.state_dir = state_dir
        self.log_path = state_dir.parent / f"{device_id}.log"
        state_dir.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", "edgefleet", "agent", "run",
            *(connect_args or ["--controller", f"127.0.0.1:{port}"]),
            "--profile", str(profile),
            "--device-id", device_id,
            "--state-dir", str(state_dir),
            "--telemetry-interval", "0.5",
        ]  # fmt: skip
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def api_url(self) -> str:
        info = json.loads((self.state_dir / "agent.json").read_text())
        return f"http://{info['api_host']}:{info['api_port']}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def health(self) -> dict[str, object] | None:
        """Return the health document, or None while no model serves or the API is down."""
        try:
            with urllib.request.urlopen(self.api_url + "/v1/health", timeout=2) as response:
                return json.load(response)
        except (OSError, urllib.error.URLError, ValueError, KeyError):
            return None

    def infer(self, image: np.ndarray) -> dict[str, object]:
        body = json.dumps({"input": image[np.newaxis].tolist()}).encode()
        request = urllib.request.Request(
            self.api_url + "/v1/infer", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.load(response)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    agents: list[AgentProcess] = []

    def start(
        device_id: str,
        port: int = 0,
        *,
        latency_budget_ms: float = 50.0,
        broker: str | None = None,
        keepalive_s: int = 30,
        profile_name: str | None = None,
    ) -> AgentProcess:
        """Start an agent on gRPC (``port``) or, given a ``broker`` URL, on MQTT."""
        profile = write_profile(
            tmp_path / f"{device_id}.toml",
            profile_name or f"profile-{device_id}",
            latency_budget_ms=latency_budget_ms,
        )
        connect_args = None
        if broker is not None:
            connect_args = [
                "--transport", "mqtt", "--broker", broker, "--mqtt-keepalive", str(keepalive_s)
            ]  # fmt: skip
        agent = AgentProcess(
            device_id, profile, tmp_path / "agents" / device_id, port, connect_args=connect_args
        )
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        agent.stop()


def wait_for(condition: Callable[[], object], *, timeout_s: float, what: str) -> object:
    """Poll ``condition`` until it returns a truthy value; fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


@pytest.fixture(autouse=True)
def single_thread_torch() -> None:
    # The tests run a controller and several agents on two cores; torch's default of one
    # thread per core would only add contention.
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
