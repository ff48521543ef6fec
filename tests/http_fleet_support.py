"""A real fleet behind the HTTP API: controller, agent processes and inference traffic.

The dashboard and operator CLI tests share one such fleet per module, because planning
the model takes most of a minute on two cores. Everything is real: the controller serves
gRPC and HTTP on loopback, each agent is an ``edgefleet agent run`` process serving the
deployed ONNX variant, and a thread sends it digits so that telemetry carries latency.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgefleet import controller as controller_package
from edgefleet.compress import digits_dataset, export_onnx, save_dataset_npz
from edgefleet.compress.training import train_classifier
from edgefleet.controller.api import HttpServer, create_app
from edgefleet.controller.api_tokens import ApiTokenStore
from edgefleet.controller.config import ControllerConfig
from edgefleet.controller.models import ApiTokenRole
from edgefleet.controller.policy import PolicyConfig
from edgefleet.controller.service import Controller

# The dashboard's static files, served at / as `controller serve --http-port` does.
DASHBOARD_DIR = Path(controller_package.__file__).parent / "web"
# Planning the fleet's model dominates the set-up time, so it is a small MLP.
HIDDEN = 96
# Requests per second sent to each agent: enough for a p95 in every telemetry window.
REQUESTS_PER_SECOND = 20.0


def build_small_mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 10))


def write_profile(path: Path, name: str, *, latency_budget_ms: float) -> Path:
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


def wait_until(condition: Callable[[], object], *, timeout_s: float, what: str) -> object:
    """Poll ``condition`` until it returns a truthy value, or raise ``TimeoutError``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


class Agent:
    """``edgefleet agent run`` as a child process, with traffic to its inference API."""

    def __init__(self, device_id: str, profile: Path, state_dir: Path, grpc_port: int) -> None:
        self.device_id = device_id
        self.state_dir = state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = state_dir.parent / f"{device_id}.log"
        self._log = self.log_path.open("wb")
        command = [
            sys.executable, "-m", "edgefleet", "agent", "run",
            "--controller", f"127.0.0.1:{grpc_port}",
            "--profile", str(profile),
            "--device-id", device_id,
            "--state-dir", str(state_dir),
            "--api-port", "0",
            "--telemetry-interval", "0.5",
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        self._stop = threading.Event()
        self._traffic: threading.Thread | None = None

    @property
    def api_url(self) -> str:
        info = json.loads((self.state_dir / "agent.json").read_text())
        return f"http://{info['api_host']}:{info['api_port']}"

    def serving_variant(self) -> str | None:
        try:
            with urllib.request.urlopen(self.api_url + "/v1/health", timeout=2) as response:
                return json.load(response).get("variant_id") or None
        except (OSError, ValueError, KeyError):
            return None

    def start_traffic(self, images: np.ndarray) -> None:
        def send() -> None:
            index = 0
            while not self._stop.wait(1.0 / REQUESTS_PER_SECOND):
                body = json.dumps({"input": images[index % len(images)][np.newaxis].tolist()})
                request = urllib.request.Request(
                    self.api_url + "/v1/infer",
                    data=body.encode(),
                    headers={"Content-Type": "application/json"},
                )
                # The agent may be swapping variants; the next request retries.
                with contextlib.suppress(OSError):
                    urllib.request.urlopen(request, timeout=5).close()
                index += 1

        self._traffic = threading.Thread(target=send, name=f"traffic-{self.device_id}", daemon=True)
        self._traffic.start()

    def stop(self) -> None:
        self._stop.set()
        if self._traffic is not None:
            self._traffic.join(timeout=5)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class HttpFleet:
    """A running controller with its HTTP API and agents; ``stop`` ends all of it.

    ``operator_token`` and ``read_token`` are API tokens with those roles.
    """

    controller: Controller
    http: HttpServer
    grpc_port: int
    url: str
    model_id: str
    workdir: Path
    operator_token: str
    read_token: str
    agents: list[Agent] = field(default_factory=list)

    def stop(self) -> None:
        for agent in self.agents:
            agent.stop()
        self.http.stop()
        self.controller.shutdown(grace_s=0.5)


def fleet_config() -> ControllerConfig:
    # No policy action during the tests: they deploy and pin by hand and check the result.
    policy = PolicyConfig(breach_samples=1000, headroom_samples=1000, cooldown_s=0.0)
    return ControllerConfig(
        telemetry_interval_s=0.5,
        host_calibration_duration_s=0.2,
        shutdown_grace_s=1.0,
        policy=policy,
    )


def start_http_fleet(
    workdir: Path,
    *,
    devices: dict[str, float],
    config: ControllerConfig | None = None,
    http_port: int = 0,
) -> HttpFleet:
    """Start a controller with the HTTP API and one agent per ``devices`` entry.

    ``devices`` maps device ids to their p95 latency budgets in milliseconds; each device
    gets a profile of its own. Returns once every agent serves a variant and has reported
    telemetry with served requests.
    """
    torch.manual_seed(0)
    dataset = digits_dataset(seed=0)
    module = build_small_mlp()
    train_classifier(module, dataset, epochs=3, seed=0, learning_rate=1e-3)
    module.eval()
    onnx_path = export_onnx(module, dataset.x_val[:1], workdir / "digits_mlp.onnx")
    data_path = save_dataset_npz(dataset, workdir / "digits.npz")

    controller = Controller(config or fleet_config(), data_dir=workdir / "controller")
    controller.start()
    grpc_port = controller.serve_grpc(host="127.0.0.1", port=0)
    tokens = ApiTokenStore(controller.registry.database)
    operator_token = tokens.create("test-operator", role=ApiTokenRole.OPERATOR).token
    read_token = tokens.create("test-reader", role=ApiTokenRole.READ).token
    app = create_app(controller, web_dir=DASHBOARD_DIR)
    http = HttpServer(app, host="127.0.0.1", port=http_port)
    port = http.start()
    model = controller.register_model(str(onnx_path), data_path=data_path)
    fleet = HttpFleet(
        controller=controller,
        http=http,
        grpc_port=grpc_port,
        url=f"http://127.0.0.1:{port}",
        model_id=model.id,
        workdir=workdir,
        operator_token=operator_token,
        read_token=read_token,
    )
    try:
        for device_id, budget_ms in devices.items():
            profile = write_profile(
                workdir / f"{device_id}.toml", f"profile-{device_id}", latency_budget_ms=budget_ms
            )
            fleet.agents.append(
                Agent(device_id, profile, workdir / "agents" / device_id, grpc_port)
            )
        for agent in fleet.agents:
            wait_until(agent.serving_variant, timeout_s=240, what=f"{agent.device_id} serving")
            agent.start_traffic(dataset.x_val)
        for agent in fleet.agents:
            wait_until(
                lambda agent=agent: any(
                    sample.requests > 0
                    for sample in controller.registry.recent_telemetry(agent.device_id, limit=5)
                ),
                timeout_s=30,
                what=f"telemetry with served requests from {agent.device_id}",
            )
    except BaseException:
        fleet.stop()
        raise
    return fleet


def get_json(url: str, *, token: str) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def http_error_body(error: urllib.error.HTTPError) -> dict:
    return json.loads(error.read().decode())
