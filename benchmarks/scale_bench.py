"""Measure one controller process carrying simulated agents over MQTT and over gRPC.

Run with ``python benchmarks/scale_bench.py --agents 1000 --out docs/benchmarks.md``. For
each transport it starts a Mosquitto broker (MQTT only) and ``edgefleet controller serve``
on loopback with a digits MLP whose fp32 file is about 4.8 MB, then runs
``edgefleet simulate`` and records its JSON report. Every agent shares one profile, so the
figures include one deployment of the planner's choice for it to every agent.
"""

from __future__ import annotations

import argparse
import getpass
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fleet_bench import build_model, machine_description, replace_section


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, *, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout_s:.0f} s")


def start_broker(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/sbin")
    if binary is None:
        raise SystemExit("mosquitto is not installed: apt-get install -y mosquitto")
    port = free_port()
    config = folder / "mosquitto.conf"
    config.write_text(
        f"listener {port} 127.0.0.1\nuser {getpass.getuser()}\nallow_anonymous true\n"
        "persistence false\nmax_queued_messages 100000\n"
    )
    process = subprocess.Popen([binary, "-c", str(config)], stderr=subprocess.DEVNULL)
    wait_for_port(port)
    return process, port


def run_transport(transport: str, *, agents: int, duration_s: float, processes: int) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"edgefleet-scale-{transport}-") as name:
        folder = Path(name)
        onnx_path, data_path, _ = build_model(folder)
        db_url = f"sqlite:///{folder / 'controller.db'}"
        grpc_port = free_port()
        broker = None
        command = [
            sys.executable, "-m", "edgefleet", "--log-level", "warning",
            "controller", "serve", "--db", db_url, "--grpc-port", str(grpc_port),
            "--data-dir", str(folder / "controller"),
            "--model", str(onnx_path), "--data", str(data_path),
        ]  # fmt: skip
        simulate = [
            sys.executable, "-m", "edgefleet", "--log-level", "warning", "simulate",
            "--agents", str(agents), "--duration", str(duration_s),
            "--processes", str(processes), "--db", db_url, "--json",
            "--transport", transport,
        ]  # fmt: skip
        if transport == "mqtt":
            broker, broker_port = start_broker(folder)
            command += ["--mqtt-url", f"mqtt://127.0.0.1:{broker_port}"]
            simulate += ["--broker", f"mqtt://127.0.0.1:{broker_port}"]
        else:
            simulate += ["--controller", f"127.0.0.1:{grpc_port}"]

        controller = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        try:
            wait_for_port(grpc_port)
            result = subprocess.run(simulate, capture_output=True, text=True, check=True)
        finally:
            controller.send_signal(signal.SIGTERM)
            controller.wait(timeout=60)
            if broker is not None:
                broker.terminate()
                broker.wait(timeout=10)
        return json.loads(result.stdout)


def render(reports: dict[str, dict], *, agents: int, duration_s: float, command: str) -> str:
    rows = []
    for transport, report in reports.items():
        deploy = report.get("deploy_seconds")
        rows.append(
            f"| {transport} | {report['agents_connected']} of {agents} | "
            f"{report['telemetry_sent']:,} | {report['telemetry_ingested']:,} | "
            f"{report['ingest_msgs_per_s']:.0f} | {report['ingest_lag_p99_ms']:.0f} | "
            f"{'not all active' if deploy is None else f'{deploy:.1f} s'} |"
        )
    table = "\n".join(rows)
    return f"""## Fleet scale on one controller process

Command: `{command}`. Machine: {machine_description()}.
Measured on {time.strftime("%Y-%m-%d")}. Simulated agents (`edgefleet simulate`) run on the
same 2 cores as the controller and the broker, for {duration_s:.0f} s each, and share one
profile. The controller deploys the variant its planner chose for that profile to every one
of them (the model's fp32 file is 4.8 MB). Ingest figures come from
the controller's telemetry rows; the rate covers the whole run, ramp-up included.

| transport | agents connected | telemetry sent | telemetry ingested | ingested msg/s \
| p99 ingest lag ms | time to deploy to all |
|---|---|---|---|---|---|---|
{table}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=200, help="simulated agents per run")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per run")
    parser.add_argument("--processes", type=int, default=2, help="simulator processes")
    parser.add_argument("--out", type=Path, help="markdown file whose scale section is replaced")
    args = parser.parse_args()
    reports = {
        transport: run_transport(
            transport, agents=args.agents, duration_s=args.duration, processes=args.processes
        )
        for transport in ("mqtt", "grpc")
    }
    command = (
        f"python benchmarks/scale_bench.py --agents {args.agents} --duration {args.duration:g} "
        f"--processes {args.processes}"
    )
    section = render(reports, agents=args.agents, duration_s=args.duration, command=command)
    if args.out is None:
        print(section)  # noqa: T201 - the script's output
    else:
        replace_section(args.out, section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
