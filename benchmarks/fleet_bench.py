"""Measure the agent's footprint and the gRPC data path, and write docs/benchmarks.md.

Run with ``make bench`` (or ``python benchmarks/fleet_bench.py --out docs/benchmarks.md``).
Every figure comes from real processes on loopback: an in-process controller serving
gRPC, and ``edgefleet agent run`` child processes measured from outside with psutil.
Figures that compare two settings are taken in the same run, one after the other.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import onnxruntime
import psutil
import torch
from torch import nn

from edgefleet.agent.download import fetch_artifact
from edgefleet.compress import digits_dataset, export_onnx, save_dataset_npz
from edgefleet.compress.training import train_classifier
from edgefleet.controller.config import ControllerConfig
from edgefleet.controller.policy import PolicyConfig
from edgefleet.controller.service import Controller
from edgefleet.protos.limits import CHANNEL_OPTIONS
from edgefleet.protos.v1 import fleet_pb2_grpc

PROFILE = """\
name = "bench-board"
cpu_arch = "x86_64"
cpu_cores = 1
cpu_flags = ["avx2", "fma"]
memory_mb = 4096
model_memory_budget_mb = 256
latency_budget_ms = 50.0
"""


@dataclass
class Agent:
    """One ``edgefleet agent run`` child process."""

    device_id: str
    state_dir: Path
    process: subprocess.Popen[bytes]
    started_at: float

    @property
    def api_url(self) -> str:
        info = json.loads((self.state_dir / "agent.json").read_text())
        return f"http://{info['api_host']}:{info['api_port']}"

    def variant(self) -> str | None:
        try:
            with urllib.request.urlopen(self.api_url + "/v1/health", timeout=2) as response:
                return json.load(response).get("variant_id")
        except (OSError, ValueError, KeyError):
            return None

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=20)


def start_agent(
    workdir: Path, device_id: str, port: int, *, telemetry_interval_s: float = 1.0
) -> Agent:
    profile = workdir / "profile.toml"
    profile.write_text(PROFILE)
    state_dir = workdir / "agents" / device_id
    state_dir.mkdir(parents=True, exist_ok=True)
    log = (workdir / f"{device_id}.log").open("wb")
    command = [
        sys.executable, "-m", "edgefleet", "agent", "run",
        "--controller", f"127.0.0.1:{port}",
        "--profile", str(profile),
        "--device-id", device_id,
        "--state-dir", str(state_dir),
        "--telemetry-interval", str(telemetry_interval_s),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    return Agent(device_id, state_dir, process, time.monotonic())


def wait_serving(agent: Agent, *, timeout_s: float = 300.0) -> float:
    """Return seconds from the agent's start until its local API serves a variant."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if agent.variant():
            return time.monotonic() - agent.started_at
        time.sleep(0.05)
    raise TimeoutError(f"{agent.device_id} served no model within {timeout_s:.0f} s")


def build_model(folder: Path) -> tuple[Path, Path, np.ndarray]:
    """Train a digits MLP (fp32 ONNX of about 4.7 MB) and return model, data and inputs."""
    dataset = digits_dataset(seed=0)
    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 2048), nn.ReLU(), nn.Linear(2048, 512), nn.ReLU(),
        nn.Linear(512, 10),
    )  # fmt: skip
    train_classifier(module, dataset, epochs=3, seed=0, learning_rate=1e-3)
    module.eval()
    onnx_path = export_onnx(module, dataset.x_val[:1], folder / "digits_mlp.onnx")
    data_path = save_dataset_npz(dataset, folder / "digits.npz")
    return onnx_path, data_path, dataset.x_val


def sample_process(pid: int, seconds: float) -> tuple[float, float]:
    """Return (peak RSS in MiB, CPU share in percent of one core) over ``seconds``."""
    process = psutil.Process(pid)
    children = process.children(recursive=True)
    start_cpu = _cpu_seconds([process, *children])
    start = time.monotonic()
    peak_rss = 0.0
    while time.monotonic() - start < seconds:
        peak_rss = max(peak_rss, process.memory_info().rss / 2**20)
        time.sleep(0.2)
    elapsed = time.monotonic() - start
    cpu = _cpu_seconds([process, *children]) - start_cpu
    return peak_rss, 100.0 * cpu / elapsed


def _cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        times = process.cpu_times()
        total += times.user + times.system
    return total


def drive(agent: Agent, inputs: np.ndarray, *, rate: float, stop: threading.Event) -> None:
    url = agent.api_url + "/v1/infer"
    index = 0
    while not stop.is_set():
        body = json.dumps({"input": inputs[index % len(inputs)][np.newaxis].tolist()}).encode()
        request = urllib.request.Request(
            url, data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            response.read()
        index += 1
        stop.wait(1.0 / rate)


def transfer_rate(controller: Controller, port: int, workdir: Path, size_mb: int) -> float:
    """Download a random artifact of ``size_mb`` MiB through DownloadArtifact; return MiB/s."""
    data = np.random.default_rng(size_mb).bytes(size_mb * 2**20)
    info = controller.artifacts.put_bytes(data)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS)
    stub = fleet_pb2_grpc.FleetServiceStub(channel)
    part = workdir / f"transfer-{size_mb}.part"
    started = time.perf_counter()
    fetch_artifact(
        stub, part, device_id="bench-0", sha256=info.sha256, size_bytes=len(data), timeout_s=300
    )
    elapsed = time.perf_counter() - started
    if hashlib.sha256(part.read_bytes()).hexdigest() != info.sha256:
        raise RuntimeError("downloaded artifact does not match its digest")
    part.unlink()
    channel.close()
    return size_mb / elapsed


def machine_description() -> str:
    model = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{model}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB; "
        f"Linux {platform.release()}, Python {platform.python_version()}, "
        f"onnxruntime {onnxruntime.__version__}, grpcio {grpc.__version__}, "
        f"torch {torch.__version__}"
    )


def run(workdir: Path) -> dict[str, object]:
    onnx_path, data_path, inputs = build_model(workdir)
    config = ControllerConfig(
        host_calibration_duration_s=1.0,
        policy=PolicyConfig(headroom_samples=100_000),
    )
    controller = Controller(config, data_dir=workdir / "controller")
    controller.start()
    port = controller.serve_grpc(host="127.0.0.1", port=0)
    results: dict[str, object] = {}
    try:
        controller.register_model(str(onnx_path), data_path=data_path)

        # 1. Registration to a served model: the first agent of a profile waits for the
        # plan; the second finds the plan done and only downloads and loads.
        first = start_agent(workdir, "bench-0", port)
        results["first_serve_s"] = wait_serving(first)
        second = start_agent(workdir, "bench-1", port)
        results["planned_serve_s"] = wait_serving(second)
        served = controller.registry.get_device("bench-0").current_variant_id
        results["served_variant_bytes"] = next(
            row.size_bytes for row in controller.ladder("bench-0") if row.variant_id == served
        )

        # 2. Footprint at a 1 s and a 10 s telemetry interval, idle, side by side.
        slow = start_agent(workdir, "bench-2", port, telemetry_interval_s=10.0)
        wait_serving(slow)
        time.sleep(3)
        results["idle_1s"] = sample_process(first.process.pid, 60)
        results["idle_10s"] = sample_process(slow.process.pid, 60)

        # 3. Footprint while serving 50 requests per second.
        stop = threading.Event()
        driver = threading.Thread(
            target=drive, args=(first, inputs), kwargs={"rate": 50.0, "stop": stop}
        )
        driver.start()
        time.sleep(3)
        results["serving_1s"] = sample_process(first.process.pid, 30)
        stop.set()
        driver.join()

        # 4. Artifact transfer over gRPC on loopback.
        results["transfer_mib_s"] = {
            size: statistics.median(
                transfer_rate(controller, port, workdir, size) for _ in range(3)
            )
            for size in (5, 50)
        }
        for agent in (first, second, slow):
            agent.stop()
    finally:
        controller.shutdown(grace_s=1.0)
    return results


def render(results: dict[str, object], *, command: str) -> str:
    idle_rss, idle_cpu = results["idle_1s"]
    slow_rss, slow_cpu = results["idle_10s"]
    serving_rss, serving_cpu = results["serving_1s"]
    transfer = results["transfer_mib_s"]
    first, planned = results["first_serve_s"], results["planned_serve_s"]
    return f"""## Agent footprint and gRPC data path

Command: `{command}`. Machine: {machine_description()}.
Measured on {time.strftime("%Y-%m-%d")}; the agents serve a digits MLP whose fp32 ONNX file is
{results["served_variant_bytes"] / 1e6:.1f} MB. RSS and CPU are read from outside the agent
process with psutil (CPU share is user plus system time over wall time, in percent of one core).

| figure | value |
|---|---|
| agent RSS, idle, 1 s telemetry interval (peak over 60 s) | {idle_rss:.0f} MiB |
| agent RSS, serving 50 requests/s (peak over 30 s) | {serving_rss:.0f} MiB |
| agent CPU, idle, 1 s telemetry interval | {idle_cpu:.2f}% of one core |
| agent CPU, idle, 10 s telemetry interval (same run) | {slow_cpu:.2f}% of one core |
| agent CPU, serving 50 requests/s, 1 s interval | {serving_cpu:.2f}% of one core |
| artifact download over gRPC on loopback, 5 MiB (median of 3) | {transfer[5]:.0f} MiB/s |
| artifact download over gRPC on loopback, 50 MiB (median of 3) | {transfer[50]:.0f} MiB/s |
| agent start to served model, first device of a profile (includes planning) | {first:.1f} s |
| agent start to served model, profile already planned | {planned:.1f} s |

The agent start includes its one-second calibration run of the reference model. The idle agent
with a 10 s interval had {slow_rss:.0f} MiB RSS.
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="markdown file whose fleet section is replaced")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-") as folder:
        results = run(Path(folder))
    section = render(results, command="make bench")
    if args.out is None:
        print(section)  # noqa: T201 - the script's output
        return 0
    replace_section(args.out, section)
    return 0


def replace_section(path: Path, section: str) -> None:
    """Replace the section that starts with the same heading, or append it."""
    heading = section.splitlines()[0]
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start = text.find(heading)
    if start == -1:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + section + (text[end + 1 :] if end != -1 else "")
    path.write_text(text)


if __name__ == "__main__":
    raise SystemExit(main())
