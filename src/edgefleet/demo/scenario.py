"""The demo scenario: one model, three device profiles, real traffic, real CPU contention.

Phases, each bounded by a timeout so the demo always ends:

1. prepare the digits CNN (trained once, then loaded from the cache) and its data;
2. start the controller and three agents as separate processes on loopback;
3. wait until every agent serves the variant the planner chose for its profile;
4. drive every agent's local inference API with held-out digits;
5. put CPU hogs on the stressed device's core until the policy steps it down and its
   served p95 is back under budget;
6. stop the hogs, check the outcome and print the summary.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefleet.demo.broker import find_mosquitto, missing_message, start_mosquitto
from edgefleet.demo.fleet import ManagedProcess, free_port, start_process, tail, wait_for_port
from edgefleet.demo.stress import CpuContention
from edgefleet.demo.traffic import DigitsTraffic
from edgefleet.profiles import DeviceProfile, parse_profile

logger = logging.getLogger(__name__)

# Budgets sized for one core of a current x86 server CPU, where the fp32 digits CNN takes
# about 1.5 ms per image at one thread. Each device declares one core and runs
# onnxruntime on one thread. The camera's memory budget excludes the fp32 model; the
# sensor gets fp32 but has the least latency headroom.
DEMO_PROFILES: dict[str, dict[str, Any]] = {
    "demo-gateway": {
        "cpu_arch": "x86_64",
        "cpu_cores": 1,
        "cpu_flags": ["avx2", "fma"],
        "memory_mb": 2048,
        "model_memory_budget_mb": 64,
        "latency_budget_ms": 10.0,
    },
    "demo-camera": {
        "cpu_arch": "x86_64",
        "cpu_cores": 1,
        "cpu_flags": ["avx2", "fma"],
        "memory_mb": 1024,
        "model_memory_budget_mb": 16,
        "latency_budget_ms": 5.0,
    },
    "demo-sensor": {
        "cpu_arch": "x86_64",
        "cpu_cores": 1,
        "cpu_flags": ["avx2", "fma"],
        "memory_mb": 512,
        "model_memory_budget_mb": 32,
        "latency_budget_ms": 2.5,
    },
}
STRESSED_DEVICE = "demo-sensor-1"
# Agents served at this rate leave the CPU mostly idle, so p95 reflects the model.
REQUESTS_PER_SECOND = 40.0
STRESS_WORKERS = 3

CONTROLLER_CONFIG = """\
[controller]
telemetry_interval_s = 1.0
host_calibration_duration_s = 1.0

[policy]
breach_samples = 3
headroom_ratio = 0.4
headroom_samples = 600
cooldown_s = 8.0
"""


class DemoError(RuntimeError):
    """A demo phase failed or timed out; the message names the phase and the log folder."""


@dataclass
class DemoDevice:
    """One agent process of the demo and the traffic that drives it."""

    device_id: str
    profile: DeviceProfile
    profile_path: Path
    api_port: int
    cores: frozenset[int] | None
    process: ManagedProcess | None = None
    traffic: DigitsTraffic | None = None


@dataclass
class DemoTimeouts:
    """Upper bounds of each phase, in seconds."""

    deploy_s: float = 240.0
    baseline_s: float = 12.0
    step_down_s: float = 90.0
    recovery_s: float = 45.0
    settle_s: float = 20.0


@dataclass
class DemoRun:
    """Everything the demo started, so that ``close`` can stop all of it."""

    workdir: Path
    devices: list[DemoDevice]
    controller: ManagedProcess | None = None
    broker: ManagedProcess | None = None
    transport: str = "grpc"
    broker_url: str | None = None  # a running broker; None starts a local Mosquitto
    stress: CpuContention | None = None
    notes: list[str] = field(default_factory=list)

    def close(self) -> None:
        if self.stress is not None:
            self.stress.stop()
        for device in self.devices:
            if device.traffic is not None:
                device.traffic.stop()
        for device in self.devices:
            if device.process is not None:
                device.process.stop()
        if self.controller is not None:
            self.controller.stop(grace_s=15.0)
        if self.broker is not None:
            self.broker.stop(grace_s=10.0)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "edgefleet" / "demo"


def assign_cores(count: int) -> list[frozenset[int] | None]:
    """Return the cores each device's agent is confined to.

    The stressed device (the last one) gets a core of its own, so that the CPU hogs slow
    it down and no other device. The controller is not confined: it compresses on every
    core before the traffic starts. With a single usable core, nothing is pinned.
    """
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return [None] * count
    stressed = frozenset({available[-1]})
    shared = frozenset(available[:-1])
    return [shared] * (count - 1) + [stressed]


def write_profiles(workdir: Path) -> list[tuple[str, DeviceProfile, Path]]:
    """Write the demo profiles as TOML files and return (device id, profile, path)."""
    profile_dir = workdir / "profiles"
    profile_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fields in DEMO_PROFILES.items():
        profile = parse_profile({"name": name, **fields}, source=f"demo profile {name}")
        path = profile_dir / f"{name}.toml"
        path.write_text(_profile_toml(profile))
        written.append((f"{name}-1", profile, path))
    return written


def _profile_toml(profile: DeviceProfile) -> str:
    # JSON spells ASCII strings, lists of strings and numbers exactly as TOML does.
    lines = [f"{key} = {json.dumps(value)}" for key, value in profile.to_dict().items()]
    return "\n".join(lines) + "\n"


def make_workdir(requested: Path | None) -> Path:
    if requested is not None:
        requested.mkdir(parents=True, exist_ok=True)
        return requested
    return Path(tempfile.mkdtemp(prefix="edgefleet-demo-"))


def start_fleet(
    run: DemoRun,
    *,
    model_args: list[str],
    say: Callable[[str], None],
    http_port: int | None = None,
) -> tuple[int, str]:
    """Start the controller and the agents; return the gRPC port and the database URL.

    With ``http_port`` the controller also serves its HTTP API and dashboard on loopback,
    and ``say`` gets the dashboard URL with an operator token in its fragment.
    """
    log_dir = run.workdir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    config_path = run.workdir / "controller.toml"
    config_path.write_text(CONTROLLER_CONFIG)
    db_url = f"sqlite:///{run.workdir / 'controller.db'}"
    grpc_port = free_port()
    device_cores = assign_cores(len(run.devices))

    controller_args: list[str] = []
    agent_args = ["--controller", f"127.0.0.1:{grpc_port}"]
    if run.transport == "mqtt":
        broker_url = run.broker_url or _start_broker(run, log_dir, say=say)
        controller_args = ["--mqtt-url", broker_url]
        agent_args = ["--transport", "mqtt", "--broker", broker_url]

    api_token = _create_api_token(db_url) if http_port is not None else None
    run.controller = start_process(
        "controller",
        [
            "controller",
            "serve",
            "--db",
            db_url,
            "--grpc-port",
            str(grpc_port),
            "--data-dir",
            str(run.workdir / "controller"),
            "--config",
            str(config_path),
            *(["--http-port", str(http_port)] if http_port is not None else []),
            *controller_args,
            *model_args,
        ],
        log_dir=log_dir,
    )
    try:
        wait_for_port(grpc_port, timeout_s=120, process=run.controller.process)
    except (RuntimeError, TimeoutError) as exc:
        log = tail(run.controller.log_path)
        raise DemoError(f"controller did not start: {exc}\n{log}") from exc
    say(f"controller listening on 127.0.0.1:{grpc_port} (log: {run.controller.log_path})")
    if api_token is not None:
        dashboard = _dashboard_url(run.controller.log_path, timeout_s=30)
        say(f"dashboard: {dashboard}#token={api_token}")

    for device, cores in zip(run.devices, device_cores, strict=True):
        device.cores = cores
        device.process = start_process(
            device.device_id,
            [
                "agent",
                "run",
                *agent_args,
                "--profile",
                str(device.profile_path),
                "--device-id",
                device.device_id,
                "--state-dir",
                str(run.workdir / "agents" / device.device_id),
                "--api-port",
                str(device.api_port),
            ],
            log_dir=log_dir,
            cpu_cores=cores,
        )
        pinned = f"core {sorted(cores)}" if cores else "all cores"
        say(f"agent {device.device_id} ({device.profile.name}, {pinned}) pid {device.process.pid}")
    return grpc_port, db_url


def _create_api_token(db_url: str) -> str:
    """Create an operator token for the dashboard in the demo's database; return it.

    It runs before the controller starts, so the two never migrate the database at once.
    """
    from edgefleet.controller.api_tokens import ApiTokenStore
    from edgefleet.controller.db import open_database
    from edgefleet.controller.models import ApiTokenRole

    database = open_database(db_url)
    try:
        return ApiTokenStore(database).create("demo", role=ApiTokenRole.OPERATOR).token
    finally:
        database.close()


def _dashboard_url(log_path: Path, *, timeout_s: float) -> str:
    """Return the dashboard URL that the controller printed once its HTTP API listened.

    The controller prints the bound port, which matters when the demo asked for port 0.
    """
    marker = "edgefleet controller HTTP API on "
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in log_path.read_text(errors="replace").splitlines():
            if line.startswith(marker):
                return line.removeprefix(marker).removesuffix("/api/v1").strip() + "/"
        time.sleep(0.2)
    raise DemoError(f"the controller did not report its HTTP port; see {log_path}")


def _start_broker(run: DemoRun, log_dir: Path, *, say: Callable[[str], None]) -> str:
    """Start Mosquitto on a free loopback port; return its URL."""
    binary = find_mosquitto()
    if binary is None:
        raise DemoError(missing_message())
    port = free_port()
    log_path = log_dir / "mosquitto.log"
    process, log_file = start_mosquitto(
        binary, run.workdir / "broker", port=port, log_path=log_path
    )
    run.broker = ManagedProcess(
        name="mosquitto", process=process, log_path=log_path, log_file=log_file
    )
    try:
        wait_for_port(port, timeout_s=20, process=process)
    except (RuntimeError, TimeoutError) as exc:
        raise DemoError(f"mosquitto did not start: {exc}\n{tail(log_path)}") from exc
    url = f"mqtt://127.0.0.1:{port}"
    say(f"broker: Mosquitto at {url} (log: {log_path})")
    return url


def wait_until(
    condition: Callable[[], bool],
    *,
    timeout_s: float,
    interval_s: float = 0.5,
    on_tick: Callable[[], None] | None = None,
) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        if on_tick is not None:
            on_tick()
        time.sleep(interval_s)
    return condition()
