"""Measure the agent's rollback time and its telemetry backlog over a real outage.

1. Rollback: a device serving variant A receives variant B, a much slower model, under a
   latency budget that no model meets, so B's health check fails. The figure is the time
   from the failed check to A serving again, and the time B served in all (health check
   plus rollback), watched by a thread that runs inference throughout and counts failed
   requests.
2. Outage: an agent sends telemetry to a gRPC FleetService on loopback through a TCP
   proxy. For ``--outage-s`` seconds the proxy forwards nothing and accepts no connection,
   but keeps the open one open, as a cut cable or a dead NAT mapping would: the agent only
   notices through gRPC keepalive. The figure is how many samples taken during the run
   reached the server, and how many were lost or dropped.

Writes the "Agent rollback and offline telemetry" section of ``docs/benchmarks.md``.
The FleetService and the proxy are the test suite's (``tests/agent/*_support.py``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "agent"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from agent_support import FleetServer, build_affine_model, build_manifest  # noqa: E402
from fault_support import BlackholeProxy, build_slow_variant  # noqa: E402
from fleet_bench import replace_section  # noqa: E402

from edgefleet.agent.daemon import Agent, AgentConfig  # noqa: E402
from edgefleet.profiles import parse_profile  # noqa: E402
from edgefleet.protos.v1 import fleet_pb2  # noqa: E402

PROFILE = {
    "name": "bench-board",
    "cpu_arch": "x86_64",
    "cpu_cores": 2,
    "cpu_flags": ["avx2"],
    "memory_mb": 1024,
    "model_memory_budget_mb": 128,
    "latency_budget_ms": 50.0,
    "inference_threads": 1,
}
GOAL_ROLLBACK_S = 5.0


def start_agent(fleet: FleetServer, state_dir: Path, **overrides) -> tuple[Agent, threading.Thread]:
    profile = parse_profile({**PROFILE, **overrides.pop("profile", {})})
    config = AgentConfig(
        controller=overrides.pop("controller", fleet.target),
        device_id="bench-0001",
        profile=profile,
        state_dir=state_dir,
        reconnect_initial_s=0.2,
        reconnect_max_s=2.0,
        calibration_duration_s=0.1,
        **overrides,
    )
    agent = Agent(config)
    thread = threading.Thread(target=agent.run, name="bench-agent")
    thread.start()
    return agent, thread


def wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.01)


def deploy(fleet: FleetServer, command_id: str, scale: float) -> fleet_pb2.VariantManifest:
    data = build_affine_model(scale, 1.0)
    manifest = build_manifest(data, scale=scale, bias=1.0)
    fleet.servicer.artifacts[manifest.sha256] = data
    fleet.servicer.send(
        fleet_pb2.Command(
            command_id=command_id,
            deploy=fleet_pb2.DeployCommand(deployment_id=command_id, manifest=manifest),
        )
    )
    return manifest


def deploy_slow(fleet: FleetServer, command_id: str) -> fleet_pb2.VariantManifest:
    data, manifest = build_slow_variant()
    fleet.servicer.artifacts[manifest.sha256] = data
    fleet.servicer.send(
        fleet_pb2.Command(
            command_id=command_id,
            deploy=fleet_pb2.DeployCommand(deployment_id=command_id, manifest=manifest),
        )
    )
    return manifest


def final_state(fleet: FleetServer, deployment_id: str) -> int | None:
    finals = (
        fleet_pb2.DEPLOYMENT_STATE_ACTIVE,
        fleet_pb2.DEPLOYMENT_STATE_FAILED,
        fleet_pb2.DEPLOYMENT_STATE_ROLLED_BACK,
    )
    states = [state for state in fleet.servicer.statuses(deployment_id) if state in finals]
    return states[-1] if states else None


def measure_rollback(work: Path, rounds: int) -> dict:
    fleet = FleetServer()
    fleet.start()
    rollback_ms, served_ms, failed_requests, requests = [], [], 0, 0
    try:
        for number in range(rounds):
            state_dir = work / f"rollback-{number}"
            good_id, bad_id = f"good-{number}", f"bad-{number}"
            agent, thread = start_agent(fleet, state_dir)
            wait_until(
                lambda: agent.connected.is_set() and fleet.servicer.open_sessions == 1,  # noqa: B023
                30,
                "session",
            )
            good = deploy(fleet, good_id, 2.0)
            wait_until(lambda: final_state(fleet, good_id), 30, "first deployment")  # noqa: B023
            agent.stop()
            thread.join()

            # The same device restarts under a budget no model meets.
            agent, thread = start_agent(fleet, state_dir, profile={"latency_budget_ms": 1e-6})
            # The first agent's session must be gone, or the command could go to it.
            wait_until(
                lambda: agent.connected.is_set() and fleet.servicer.open_sessions == 1,  # noqa: B023
                30,
                "session",
            )
            watch = _Watcher(agent, good.variant_id)
            watch.start()
            deploy_slow(fleet, bad_id)
            wait_until(lambda: final_state(fleet, bad_id), 30, "rollback")  # noqa: B023
            watch.stop()
            assert final_state(fleet, bad_id) == fleet_pb2.DEPLOYMENT_STATE_ROLLED_BACK
            assert agent.runtime.variant_id == good.variant_id
            rollback_ms.append(agent._deployer.last_rollback_ms)
            served_ms.append(watch.foreign_ms)
            failed_requests += watch.failures
            requests += watch.requests
            agent.stop()
            thread.join()
    finally:
        fleet.stop()
    return {
        "rounds": rounds,
        "rollback_median_ms": statistics.median(rollback_ms),
        "rollback_max_ms": max(rollback_ms),
        "served_median_ms": statistics.median(served_ms),
        "served_max_ms": max(served_ms),
        "requests": requests,
        "failed_requests": failed_requests,
    }


class _Watcher(threading.Thread):
    """Times how long a variant other than ``expected`` served; runs A's inference meanwhile."""

    def __init__(self, agent: Agent, expected: str) -> None:
        super().__init__(name="bench-watch", daemon=True)
        self._agent, self._expected = agent, expected
        self._stopping = threading.Event()
        self.foreign_ms = 0.0
        self.failures = 0
        self.requests = 0

    def run(self) -> None:
        x = np.ones((1, 4), dtype=np.float32)
        first_foreign = last_foreign = None
        while not self._stopping.is_set():
            current = self._agent.runtime.current
            now = time.perf_counter()
            if current is not None and current.variant_id != self._expected:
                # B takes another input shape, so its serving time is read, not requested.
                first_foreign = first_foreign or now
                last_foreign = now
                continue
            self.requests += 1
            try:
                self._agent.runtime.infer({"x": x})
            except Exception:  # any failed request counts; the figure is the count
                self.failures += 1
        if first_foreign is not None and last_foreign is not None:
            self.foreign_ms = (last_foreign - first_foreign) * 1000.0

    def stop(self) -> None:
        self._stopping.set()
        self.join()


def measure_outage(work: Path, *, outage_s: float, interval_s: float) -> dict:
    fleet = FleetServer()
    fleet.start()
    proxy = BlackholeProxy(fleet.port)
    agent, thread = start_agent(
        fleet,
        work / "outage",
        telemetry_interval_s=interval_s,
        controller=f"127.0.0.1:{proxy.port}",
    )
    fleet.servicer.telemetry_interval_s = interval_s
    try:
        wait_until(lambda: len(fleet.servicer.of_kind("telemetry")) >= 5, 60, "telemetry")
        proxy.cut()
        started = time.monotonic()
        time.sleep(outage_s)
        detected = not agent.connected.is_set()
        proxy.restore()
        outage_measured_s = time.monotonic() - started
        wait_until(lambda: agent.connected.is_set(), 120, "reconnect")
        reconnected = time.monotonic()
        reconnected_ms = time.time() * 1000

        # The backlog is FIFO, so once a sample taken after the reconnect arrives, every
        # earlier one has been sent.
        def drained() -> bool:
            return any(
                s.sampled_at_ms > reconnected_ms + 1000 for s in fleet.servicer.of_kind("telemetry")
            )

        wait_until(drained, outage_s + 300, "backlog drained")
        drained_s = time.monotonic() - reconnected
    finally:
        agent.stop()
        thread.join()
        fleet.stop()
    samples = fleet.servicer.of_kind("telemetry")
    last_seq = min(s.seq for s in samples if s.sampled_at_ms > reconnected_ms + 1000)
    received = [s.seq for s in samples if s.seq <= last_seq]
    expected = set(range(1, last_seq + 1))
    missing = sorted(expected - set(received))
    dropped = max((s.dropped_samples for s in samples), default=0)
    return {
        "outage_s": outage_measured_s,
        "detected": detected,
        "interval_s": interval_s,
        "sampled": len(expected),
        "received": len(set(received)),
        "duplicates": len(received) - len(set(received)),
        "missing": missing,
        "dropped_reported": dropped,
        "drain_s": drained_s,
        "rate_per_s": agent.config.backlog_rate_per_s,
        "bound": agent.config.backlog_samples,
    }


def render(rollback: dict, outage: dict, load: str) -> str:
    missing = outage["missing"]
    missing_text = ", ".join(str(seq) for seq in missing[:10]) if missing else "none"
    rollback_row = (
        f"| failed health check to A serving again | {rollback['rollback_median_ms']:.2f} ms "
        f"| {rollback['rollback_max_ms']:.2f} ms |"
    )
    served_row = (
        f"| B serving in all (health check and rollback) | {rollback['served_median_ms']:.2f} ms "
        f"| {rollback['served_max_ms']:.2f} ms |"
    )
    drain = f"{outage['drain_s']:.1f} s at up to {outage['rate_per_s']:.0f} messages/s"
    return f"""## Agent rollback and offline telemetry

Measured by `benchmarks/resilience_bench.py` on loopback, with the test suite's gRPC
FleetService and a real agent in the same process, on a 2-core machine shared with other
jobs (load average at the start: {load}).

**Rollback after a failed health check** ({rollback["rounds"]} rounds). The device serves
variant A, then receives variant B, a chain of 16 256x256 MatMuls that is far slower, under a
latency budget of 1e-6 ms, which no model meets.

| figure | median | max |
|---|---|---|
{rollback_row}
{served_row}

The goal is under {GOAL_ROLLBACK_S:.0f} s. A keeps its onnxruntime session in memory until
B commits, so the rollback is a swap under a lock. The figure also includes writing the
state file (with fsync) and queueing the status. Requests to A while it served during the
runs: {rollback["requests"]}, of which {rollback["failed_requests"]} failed.

**Telemetry across a {outage["outage_s"]:.0f} s outage.** A TCP proxy between the agent
and the server drops all traffic and refuses new connections, but keeps the open
connection open, as a cut cable would, so only keepalive can tell the agent
(detected within the outage: {"yes" if outage["detected"] else "no"}). The telemetry
interval is shortened to {outage["interval_s"]} s (the default is 1 s) so that the outage
fills the backlog faster.

| figure | value |
|---|---|
| samples taken | {outage["sampled"]} |
| samples received | {outage["received"]} |
| samples missing | {len(missing)} ({missing_text}) |
| samples received twice | {outage["duplicates"]} |
| drops reported by the agent | {outage["dropped_reported"]} |
| backlog bound | {outage["bound"]} samples |
| time to drain after the reconnect | {drain} |
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--rounds", type=int, default=5, help="rollback rounds")
    parser.add_argument("--outage-s", type=float, default=600.0, help="outage length, seconds")
    parser.add_argument("--interval-s", type=float, default=0.2, help="telemetry interval")
    args = parser.parse_args()

    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="edgefleet-resilience-") as work:
        rollback = measure_rollback(Path(work), args.rounds)
        print(rollback, flush=True)  # noqa: T201
        outage = measure_outage(Path(work), outage_s=args.outage_s, interval_s=args.interval_s)
        print(outage, flush=True)  # noqa: T201
    replace_section(args.out, render(rollback, outage, load))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
