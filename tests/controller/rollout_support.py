"""Helpers for rollout tests that drive the controller the way a transport does."""

from __future__ import annotations

from edgefleet.controller.rollouts import Rollout
from edgefleet.controller.service import Controller
from edgefleet.protos.v1 import fleet_pb2

ACTIVE = fleet_pb2.DEPLOYMENT_STATE_ACTIVE
FAILED = fleet_pb2.DEPLOYMENT_STATE_FAILED
ROLLED_BACK = fleet_pb2.DEPLOYMENT_STATE_ROLLED_BACK


def report(
    controller: Controller,
    device_id: str,
    deployment_id: str,
    state: int,
    message: str = "",
    *,
    previous_variant_id: str = "",
) -> None:
    """Apply a deployment status report, as the agent's session would deliver it."""
    controller.handle_status(
        device_id,
        fleet_pb2.DeploymentStatus(
            device_id=device_id,
            deployment_id=deployment_id,
            state=state,
            message=message,
            previous_variant_id=previous_variant_id,
        ),
    )


def report_deploying(
    controller: Controller, rollout_id: str, state: int, *, message: str = ""
) -> list[str]:
    """Report ``state`` for every deployment of the rollout still in flight.

    Returns the device ids reported for.
    """
    rollout = controller.rollouts.get(rollout_id)
    reported = []
    for device in rollout.devices:
        if device.state.value == "deploying":
            assert device.deployment_id is not None
            report(controller, device.device_id, device.deployment_id, state, message)
            reported.append(device.device_id)
        elif device.state.value == "reverting":
            assert device.revert_deployment_id is not None
            report(controller, device.device_id, device.revert_deployment_id, state, message)
            reported.append(device.device_id)
    return reported


def send_latency(
    controller: Controller, device_id: str, variant_id: str, p95_ms: float, *, count: int
) -> None:
    """Ingest ``count`` samples in which the device served requests at ``p95_ms``."""
    for seq in range(count):
        controller.ingest_telemetry(
            device_id,
            fleet_pb2.TelemetrySample(
                device_id=device_id,
                seq=seq,
                sampled_at_ms=1_700_000_000_000 + seq,
                cpu_percent=10.0,
                memory_total_mb=1024.0,
                memory_available_mb=600.0,
                disk_free_mb=2048.0,
                agent_rss_mb=40.0,
                variant_id=variant_id,
                requests=20,
                latency_p50_ms=p95_ms / 2,
                latency_p95_ms=p95_ms,
                latency_p99_ms=p95_ms * 1.2,
                throughput_rps=20.0,
                window_s=1.0,
            ),
        )


def states(rollout: Rollout) -> dict[str, str]:
    """Return each device's state in the rollout, by device id."""
    return {device.device_id: device.state.value for device in rollout.devices}
