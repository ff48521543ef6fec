"""Measure one controller process carrying simulated agents over MQTT and over gRPC.

Run with ``python benchmarks/scale_bench.py --out docs/benchmarks.md``. Each scenario
starts its own Mosquitto broker (MQTT only) and ``edgefleet controller serve`` on
loopback, runs ``edgefleet simulate`` against them and records its JSON report:

- ingest: ``--ingest-agents`` agents sending one sample a second;
- connections: ``--connection-agents`` agents held connected, one sample every 10 s;
- deploy: ``--deploy-agents`` agents sharing one profile, with a digits MLP whose fp32
  ONNX file is about 4.8 MB registered, so the controller plans it and deploys its
  choice to every agent;
- broker restart (MQTT only): ``--restart-agents`` agents; the broker is stopped and
  started again on the same port mid-run, and the controller's events show how fast
  the devices registered again against its connect rate.

The broker is configured with ``max_connections -1`` and started with its open-file
limit raised, so that it can hold thousands of connections.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fleet_bench import build_model, machine_description, replace_section

# Connections the broker and the controller may hold; each needs a file descriptor.
OPEN_FILES = 65_536
CONNECT_RATE_PER_S = 100.0
CONNECT_BURST = 100


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    agents: int
    duration_s: float
    ramp_s: float
    telemetry_interval_s: float
    with_model: bool = False
    restart_broker_at_s: float | None = None


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
            time.sleep(0.1)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout_s:.0f} s")


def raise_open_files() -> None:
    """Raise this process's open-file limit; children (broker, controller) inherit it."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = OPEN_FILES if hard == resource.RLIM_INFINITY else min(OPEN_FILES, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


class Broker:
    """A Mosquitto process that can be restarted on the same port."""

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/sbin")
        if binary is None:
            raise SystemExit("mosquitto is not installed: apt-get install -y mosquitto")
        self.binary = binary
        self.port = free_port()
        self.config = folder / "mosquitto.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\nuser {getpass.getuser()}\nallow_anonymous true\n"
            "persistence false\nmax_connections -1\nmax_queued_messages 100000\n"
            "max_inflight_messages 100\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.config)], stderr=subprocess.DEVNULL
        )
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None


def run_scenario(scenario: Scenario, transport: str, *, processes: int, model: tuple) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"edgefleet-scale-{transport}-") as name:
        folder = Path(name)
        db_url = f"sqlite:///{folder / 'controller.db'}"
        config_path = folder / "controller.toml"
        # The controller sets every agent's telemetry interval at registration.
        config_path.write_text(
            f"[controller]\nconnect_rate_per_s = {CONNECT_RATE_PER_S}\n"
            f"connect_burst = {CONNECT_BURST}\n"
            f"telemetry_interval_s = {scenario.telemetry_interval_s}\n"
        )
        grpc_port = free_port()
        command = [
            sys.executable, "-m", "edgefleet", "--log-level", "info",
            "controller", "serve", "--db", db_url, "--grpc-port", str(grpc_port),
            "--data-dir", str(folder / "controller"), "--config", str(config_path),
        ]  # fmt: skip
        if scenario.with_model:
            onnx_path, data_path = model
            command += ["--model", str(onnx_path), "--data", str(data_path)]
        simulate = [
            sys.executable, "-m", "edgefleet", "--log-level", "warning", "simulate",
            "--agents", str(scenario.agents), "--duration", str(scenario.duration_s),
            "--ramp", str(scenario.ramp_s), "--processes", str(processes),
            "--telemetry-interval", str(scenario.telemetry_interval_s),
            "--db", db_url, "--json", "--transport", transport,
        ]  # fmt: skip
        broker = None
        if transport == "mqtt":
            broker = Broker(folder)
            broker.start()
            command += ["--mqtt-url", f"mqtt://127.0.0.1:{broker.port}"]
            simulate += ["--broker", f"mqtt://127.0.0.1:{broker.port}"]
        else:
            simulate += ["--controller", f"127.0.0.1:{grpc_port}"]

        log_path = folder / "controller.log"
        with log_path.open("wb") as log:
            controller = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
        restarted_at: list[datetime] = []
        try:
            wait_for_port(grpc_port, timeout_s=120)
            restarter = None
            if scenario.restart_broker_at_s is not None and broker is not None:
                restarter = threading.Thread(
                    target=_restart_later,
                    args=(broker, scenario.restart_broker_at_s, restarted_at),
                    daemon=True,
                )
                restarter.start()
            result = subprocess.run(simulate, capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"simulate failed: {result.stderr[-4000:]}")
            report = json.loads(result.stdout.strip().splitlines()[-1])
            report["load_after"] = os.getloadavg()[0]
            report.update(_deployed_size(db_url))
            if restarted_at:
                report.update(_reconnect_figures(db_url, restarted_at[0]))
        finally:
            controller.send_signal(signal.SIGTERM)
            controller.wait(timeout=120)
            if broker is not None:
                broker.stop()
        report.update(_ingest_counters(log_path.read_text(errors="replace")))
        return report


def _restart_later(broker: Broker, after_s: float, restarted_at: list[datetime]) -> None:
    time.sleep(after_s)
    broker.stop()
    time.sleep(1.0)
    restarted_at.append(datetime.now(UTC))
    broker.start()


def _deployed_size(db_url: str) -> dict:
    import sqlalchemy as sa

    from edgefleet.controller.db import open_database
    from edgefleet.controller.models import DeploymentRow, VariantRow

    database = open_database(db_url, migrate=False)
    try:
        with database.session() as session:
            sizes = session.scalars(
                sa.select(VariantRow.size_bytes)
                .join(DeploymentRow, DeploymentRow.variant_id == VariantRow.variant_id)
                .distinct()
            ).all()
    finally:
        database.close()
    return {"deployed_sizes_bytes": sorted(sizes)}


def _reconnect_figures(db_url: str, restarted_at: datetime) -> dict:
    """Registrations per second after the restart, and when the last device was back."""
    import sqlalchemy as sa

    from edgefleet.controller.db import open_database
    from edgefleet.controller.models import EventKind, EventRow

    database = open_database(db_url, migrate=False)
    try:
        with database.session() as session:
            rows = session.execute(
                sa.select(EventRow.kind, EventRow.device_id, EventRow.at).where(
                    EventRow.at >= restarted_at,
                    EventRow.kind.in_([EventKind.REGISTERED, EventKind.CONNECTED]),
                )
            ).all()
    finally:
        database.close()
    registered = [at for kind, _device, at in rows if kind is EventKind.REGISTERED]
    first_session: dict[str, datetime] = {}
    for kind, device, at in rows:
        if kind is EventKind.CONNECTED and device not in first_session:
            first_session[device] = at
    per_second = Counter(int((at - restarted_at).total_seconds()) for at in registered)
    back_s = max(first_session.values()) - restarted_at if first_session else None
    return {
        "devices_back": len(first_session),
        "all_back_after_s": None if back_s is None else round(back_s.total_seconds(), 1),
        "max_registrations_per_s": max(per_second.values(), default=0),
        "registrations_after_restart": len(registered),
    }


def _ingest_counters(log: str) -> dict:
    for line in reversed(log.splitlines()):
        if "telemetry ingest:" in line:
            return {"controller_ingest_log": line.split("telemetry ingest:", 1)[1].strip()}
    return {"controller_ingest_log": None}


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    return [
        Scenario("ingest", args.ingest_agents, 60, 10, 1.0),
        Scenario("connections", args.connection_agents, 90, 30, 10.0),
        Scenario("deploy", args.deploy_agents, 180, 10, 5.0, with_model=True),
        Scenario("broker restart", args.restart_agents, 75, 10, 5.0, restart_broker_at_s=30),
    ]


def _cell(name: str, report: dict | None) -> str:
    if report is None:
        return "not run"
    if name == "ingest":
        rate, lag = report["ingest_msgs_per_s"], report["ingest_lag_p99_ms"]
        return f"{rate:,.0f} msg/s, p99 lag {lag:,.0f} ms"
    if name == "connections":
        return f"{report['agents_online_at_end']:,} of {report['agents']:,} online at the end"
    if name == "deploy":
        seconds = report["deploy_seconds"]
        sizes = ", ".join(f"{size / 1e6:.1f} MB" for size in report["deployed_sizes_bytes"])
        if seconds is None:
            return f"{report['agents_deployed']:,} of {report['agents']:,} ACTIVE ({sizes})"
        return f"{seconds:.1f} s to all {report['agents_deployed']:,} ({sizes})"
    back = report.get("all_back_after_s")
    return (
        f"{report.get('devices_back', 0):,} of {report['agents']:,} back after "
        f"{'n/a' if back is None else f'{back:.1f} s'}; at most "
        f"{report.get('max_registrations_per_s', 0)} registrations in one second"
    )


GOALS = {
    "ingest": "2,000 msg/s ingested, p99 ingest lag under 1 s",
    "connections": "5,000 agents held connected",
    "deploy": "one 5 MB variant to 1,000 agents in under 60 s",
    "broker restart": (
        f"1,000 agents back after a broker restart within a connect rate of "
        f"{CONNECT_RATE_PER_S:.0f}/s (burst {CONNECT_BURST}), so at most "
        f"{CONNECT_RATE_PER_S + CONNECT_BURST:.0f} registrations in any second"
    ),
}


def render(
    results: dict[str, dict[str, dict]], scenario_list: list[Scenario], *, command: str, load: str
) -> str:
    goal_rows = []
    detail_rows = []
    for scenario in scenario_list:
        by_transport = results.get(scenario.name, {})
        goal_rows.append(
            f"| {scenario.name} | {GOALS[scenario.name]} | "
            f"{_cell(scenario.name, by_transport.get('mqtt'))} | "
            f"{_cell(scenario.name, by_transport.get('grpc'))} |"
        )
        for transport, report in by_transport.items():
            lag = report["ingest_lag_p99_ms"]
            detail_rows.append(
                f"| {scenario.name} | {transport} | {scenario.agents:,} | "
                f"{scenario.telemetry_interval_s:g} s | {scenario.duration_s:.0f} s "
                f"({scenario.ramp_s:.0f} s ramp) | {report['agents_connected']:,} | "
                f"{report['reconnects']:,} | {report['telemetry_sent']:,} | "
                f"{report['telemetry_ingested'] or 0:,} | "
                f"{'n/a' if lag is None else f'{lag:,.0f}'} | {report['load_after']:.1f} |"
            )
    goals = "\n".join(goal_rows)
    details = "\n".join(detail_rows)
    return f"""## Fleet scale on one controller process

Command: `{command}`. Machine: {machine_description()}.
Measured on {time.strftime("%Y-%m-%d")}; load average before the run: {load}.
The simulated agents (`edgefleet simulate`, asyncio, 4 processes), the broker and the
controller share the same 2 cores, so every figure includes the cost of simulating the
fleet. One controller process serves each run, with SQLite, and is started fresh for
each scenario and transport. Ingest rates are steady rates: rows received from one
telemetry interval after the ramp until the end of the run. The p99 lag covers every
row. Deploy times run from the first deploy command to the last agent ACTIVE, after
downloading the artifact and checking its SHA-256. The planner chooses the deployed
variant; its size is given.

| scenario | goal | MQTT | gRPC |
|---|---|---|---|
{goals}

| scenario | transport | agents | telemetry interval | run | connected | reconnects \
| sent | ingested | p99 lag ms | load after |
|---|---|---|---|---|---|---|---|---|---|---|
{details}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ingest-agents", type=int, default=2000)
    parser.add_argument("--connection-agents", type=int, default=5000)
    parser.add_argument("--deploy-agents", type=int, default=1000)
    parser.add_argument("--restart-agents", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=4, help="simulator processes")
    parser.add_argument(
        "--only", nargs="*", default=None, help="scenario names to run (default: all)"
    )
    parser.add_argument("--transports", nargs="*", default=["mqtt", "grpc"])
    parser.add_argument("--out", type=Path, help="markdown file whose scale section is replaced")
    parser.add_argument("--json", type=Path, help="also write every raw report to this file")
    args = parser.parse_args()

    raise_open_files()
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    scenario_list = [
        scenario for scenario in scenarios(args) if args.only is None or scenario.name in args.only
    ]
    model: tuple = ()
    results: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="edgefleet-scale-model-") as model_dir:
        if any(scenario.with_model for scenario in scenario_list):
            onnx_path, data_path, _ = build_model(Path(model_dir))
            model = (onnx_path, data_path)
        for scenario in scenario_list:
            for transport in args.transports:
                if scenario.restart_broker_at_s is not None and transport != "mqtt":
                    continue
                print(f"running {scenario.name} over {transport}", file=sys.stderr)  # noqa: T201
                report = run_scenario(scenario, transport, processes=args.processes, model=model)
                print(json.dumps(report), file=sys.stderr)  # noqa: T201
                results.setdefault(scenario.name, {})[transport] = report
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    shown = [arg for arg in sys.argv[1:] if arg != "--json" and not arg.endswith(".json")]
    command = " ".join(["python benchmarks/scale_bench.py", *shown])
    section = render(results, scenario_list, command=command, load=load)
    if args.out is None:
        print(section)  # noqa: T201 - the script's output
    else:
        replace_section(args.out, section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
