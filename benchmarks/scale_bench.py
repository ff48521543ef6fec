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
  the devices registered again against its connect rate. A device counts as back at
  its first registration or session after the restart.

The broker is configured with ``max_connections -1`` and started with its open-file
limit raised, so that it can hold thousands of connections.

The script writes the section "Fleet scale on one controller process" of the output
file: the tables, whether each goal was met, and the CPU time of the controller and of
the simulator in each run, so that a reader can see which of them ran out of CPU. The
analysis of a run belongs in the section after it, which the script leaves alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import os
import re
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
        controller_cpu_s: float | None = None
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
            children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
            # From here on: the controller's start-up (imports, migrations) is not counted.
            controller_start_s = _process_cpu_s(controller.pid)
            result = subprocess.run(simulate, capture_output=True, text=True)
            children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
            controller_end_s = _process_cpu_s(controller.pid)
            if controller_start_s is not None and controller_end_s is not None:
                controller_cpu_s = round(controller_end_s - controller_start_s, 1)
            if result.returncode != 0:
                raise RuntimeError(f"simulate failed: {result.stderr[-4000:]}")
            report = json.loads(result.stdout.strip().splitlines()[-1])
            # The simulator's worker processes are its children, waited for before it
            # exits, so their CPU time is counted in its own.
            report["simulator_cpu_s"] = round(
                children_after.ru_utime
                + children_after.ru_stime
                - children_before.ru_utime
                - children_before.ru_stime,
                1,
            )
            report["controller_cpu_s"] = controller_cpu_s
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
    # A device is back at its first registration or session after the restart. The
    # broker sends no wills when it stops, so the controller may still hold a device's
    # session, and the device's ONLINE presence then adds no connected event.
    back_at: dict[str, datetime] = {}
    for _kind, device, at in rows:
        back_at[device] = min(at, back_at.get(device, at))
    per_second = Counter(int((at - restarted_at).total_seconds()) for at in registered)
    back_s = max(back_at.values()) - restarted_at if back_at else None
    return {
        "devices_back": len(back_at),
        "all_back_after_s": None if back_s is None else round(back_s.total_seconds(), 1),
        "max_registrations_per_s": max(per_second.values(), default=0),
        "registrations_after_restart": len(registered),
    }


def _process_cpu_s(pid: int) -> float | None:
    """User plus system CPU seconds of a running process, from ``/proc/PID/stat``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name in brackets may contain spaces; utime and stime are the 14th
    # and 15th fields, counted from the pid.
    fields = stat.rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return round(ticks / os.sysconf("SC_CLK_TCK"), 1)


_INGEST_LOG = re.compile(
    r"(?P<submitted>\d+) samples submitted, (?P<stored>\d+) stored in (?P<batches>\d+) "
    r"batches, (?P<dropped>\d+) dropped, (?P<waited>\d+) submits waited for room; "
    r"connections: (?P<admitted>\d+) admitted, (?P<rate_rejected>\d+) over the connect rate"
)


def _ingest_counters(log: str) -> dict:
    """The controller's closing ingest and connect-rate counters, from its log."""
    for line in reversed(log.splitlines()):
        if "telemetry ingest:" in line:
            text = line.split("telemetry ingest:", 1)[1].strip()
            match = _INGEST_LOG.search(text)
            counters = {k: int(v) for k, v in match.groupdict().items()} if match else {}
            return {"controller_ingest_log": text, "controller_counters": counters}
    return {"controller_ingest_log": None, "controller_counters": {}}


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    # Durations, ramps and the restart time scale together, so a short trial run keeps
    # the shape of a full one.
    factor = args.time_factor
    return [
        Scenario("ingest", args.ingest_agents, 60 * factor, 10 * factor, 1.0),
        Scenario("connections", args.connection_agents, 90 * factor, 30 * factor, 10.0),
        Scenario("deploy", args.deploy_agents, 180 * factor, 10 * factor, 5.0, with_model=True),
        Scenario(
            "broker restart",
            args.restart_agents,
            75 * factor,
            10 * factor,
            5.0,
            restart_broker_at_s=30 * factor,
        ),
    ]


def goal_met(name: str, report: dict, scenario: Scenario) -> bool:
    """Return whether one run met its scenario's goal, as stated in ``GOALS``."""
    if name == "ingest":
        rate, lag = report["ingest_msgs_per_s"], report["ingest_lag_p99_ms"]
        return rate is not None and lag is not None and rate >= 2000 and lag < 1000
    if name == "connections":
        return report["agents_online_at_end"] >= 5000
    if name == "deploy":
        seconds = report["deploy_seconds"]
        return seconds is not None and seconds < 60 and report["agents"] >= 1000
    back = report.get("all_back_after_s")
    bound = CONNECT_RATE_PER_S + CONNECT_BURST
    return (
        back is not None
        and report.get("devices_back", 0) >= scenario.agents >= 1000
        and report.get("max_registrations_per_s", 0) <= bound
    )


def _cell(name: str, report: dict | None, scenario: Scenario) -> str:
    if report is None:
        return "not run"
    verdict = "met" if goal_met(name, report, scenario) else "not met"
    return f"{verdict}: {_figures(name, report)}"


def _figures(name: str, report: dict) -> str:
    if name == "ingest":
        rate, lag = report["ingest_msgs_per_s"], report["ingest_lag_p99_ms"]
        if rate is None or lag is None:
            return "no telemetry stored"
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
    results: dict[str, dict[str, dict]],
    scenario_list: list[Scenario],
    *,
    command: str,
    load: str,
    processes: int,
) -> str:
    goal_rows = []
    detail_rows = []
    cpu_rows = []
    for scenario in scenario_list:
        by_transport = results.get(scenario.name, {})
        goal_rows.append(
            f"| {scenario.name} | {GOALS[scenario.name]} | "
            f"{_cell(scenario.name, by_transport.get('mqtt'), scenario)} | "
            f"{_cell(scenario.name, by_transport.get('grpc'), scenario)} |"
        )
        for transport, report in by_transport.items():
            lag = report["ingest_lag_p99_ms"]
            cpu_rows.append(_cpu_row(scenario, transport, report))
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
    cpus = "\n".join(cpu_rows)
    return f"""## Fleet scale on one controller process

Command: `{command}`. Machine: {machine_description()}.
Measured on {time.strftime("%Y-%m-%d")}; load average before the run: {load}.
The simulated agents (`edgefleet simulate`, asyncio, {processes} processes), the broker and the
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

Where the CPU went: CPU seconds of the controller process and of the simulator
(all its worker processes) during the simulation, and the cores each kept busy on
average. One controller process runs Python under one GIL, so it cannot use much more
than one core; near 1.0 it is the bottleneck. The 2 cores are shared with the broker.
The last columns are the controller's own counters: ingest batches, submits that
waited for room in the full ingest queue, and registrations over the connect rate.

| scenario | transport | controller CPU s | controller cores | simulator CPU s \
| simulator cores | batches | waited submits | over connect rate |
|---|---|---|---|---|---|---|---|---|
{cpus}

"""


def _cpu_row(scenario: Scenario, transport: str, report: dict) -> str:
    duration = report["duration_s"]
    controller = report.get("controller_cpu_s")
    simulator = report.get("simulator_cpu_s")
    counters = report.get("controller_counters") or {}

    def cores(seconds: float | None) -> str:
        return "n/a" if seconds is None or not duration else f"{seconds / duration:.2f}"

    def count(name: str) -> str:
        return f"{counters[name]:,}" if name in counters else "n/a"

    return (
        f"| {scenario.name} | {transport} | {'n/a' if controller is None else controller} | "
        f"{cores(controller)} | {'n/a' if simulator is None else simulator} | "
        f"{cores(simulator)} | {count('batches')} | {count('waited')} | "
        f"{count('rate_rejected')} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ingest-agents", type=int, default=2000)
    parser.add_argument("--connection-agents", type=int, default=5000)
    parser.add_argument("--deploy-agents", type=int, default=1000)
    parser.add_argument("--restart-agents", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=4, help="simulator processes")
    parser.add_argument(
        "--time-factor",
        type=float,
        default=1.0,
        help="multiply every scenario's duration, ramp and broker restart time by this "
        "(a full run at 1.0 takes about 15 minutes)",
    )
    parser.add_argument(
        "--only", nargs="*", default=None, help="scenario names to run (default: all)"
    )
    parser.add_argument("--transports", nargs="*", default=["mqtt", "grpc"])
    parser.add_argument("--out", type=Path, help="markdown file whose scale section is replaced")
    parser.add_argument("--json", type=Path, help="also write every raw report to this file")
    args = parser.parse_args()
    if not 0 < args.time_factor <= 10:
        parser.error(f"--time-factor must be in (0, 10], got {args.time_factor}")

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
    section = render(results, scenario_list, command=command, load=load, processes=args.processes)
    if args.out is None:
        print(section)  # noqa: T201 - the script's output
    else:
        replace_section(args.out, section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
