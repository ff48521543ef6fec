"""Advancing one rollout: starting waves, following deployments, checking gates, reverting.

``RolloutEngine.advance`` is one step over the state stored in the database, so the step
after a controller restart continues where the last process stopped:

1. follow each in-flight deployment of the rollout: ACTIVE makes the device UPDATED;
   FAILED, ROLLED_BACK, SUPERSEDED or no report within ``deploy_timeout_s`` makes it
   FAILED (the agent keeps serving its previous variant);
2. halt as soon as the failed share of the current wave is above ``max_failure_rate``;
3. once every device of the wave has reported, soak for ``soak_s``, then compare each
   device's served p95 with its baseline and halt when the unhealthy share (failed or
   regressed) is above ``max_failure_rate``;
4. a passed wave starts the next one, unless the rollout is paused; the last one ends
   the rollout SUCCEEDED.

Halting or aborting sends each device that the rollout updated, or may still update (its
deployment is in flight or timed out), back to its previous variant, and
``follow_reverts`` follows those deployments until they end.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from edgefleet.controller.deployments import Deployer
from edgefleet.controller.errors import UnknownDeviceError, UnknownVariantError
from edgefleet.controller.models import (
    DeploymentState,
    DeviceRow,
    EventKind,
    RolloutDeviceRow,
    RolloutDeviceState,
    RolloutRow,
    RolloutState,
    RolloutWaveRow,
    WaveState,
    utc_now,
)
from edgefleet.controller.registry import Registry
from edgefleet.controller.rollout_spec import GateConfig
from edgefleet.controller.rollout_store import RolloutStore

__all__ = ["RolloutEngine"]

logger = logging.getLogger(__name__)

_FAILED_DEPLOYMENT_STATES = (
    DeploymentState.FAILED,
    DeploymentState.ROLLED_BACK,
    DeploymentState.SUPERSEDED,
)


class RolloutEngine:
    """Steps of a rollout over the stored state; see the module docstring.

    Not thread-safe: ``RolloutManager`` calls it under its lock.
    """

    def __init__(self, registry: Registry, store: RolloutStore, deployer: Deployer) -> None:
        self._registry = registry
        self._store = store
        self._deployer = deployer

    def advance(self, rollout_id: str) -> None:
        """Take every step that the rollout's stored state allows now."""
        rollout = self._store.get(rollout_id)
        if rollout.state.is_terminal:
            self.follow_reverts(rollout_id)
            return
        gates = GateConfig.from_mapping(rollout.gates)
        now = utc_now()
        self._follow_deployments(rollout, gates, now=now)

        waves = self._store.waves(rollout.id)
        wave = waves[rollout.current_wave]
        if wave.state is WaveState.PENDING:
            if rollout.state is not RolloutState.RUNNING:
                return
            self._start_wave(rollout, wave, now=now)
            wave = self._store.waves(rollout.id)[wave.index]
        if wave.state in (WaveState.DEPLOYING, WaveState.SOAKING):
            self._check_wave(rollout, wave, gates, now=now)

    def stop(
        self, rollout: RolloutRow, *, state: RolloutState, reason: str, event: EventKind
    ) -> None:
        """End a rollout HALTED or ABORTED and revert the devices it updated."""
        now = utc_now()
        self._store.update(rollout.id, state=state, reason=reason, finished_at=now)
        for wave in self._store.waves(rollout.id):
            if wave.state in (WaveState.PENDING, WaveState.DEPLOYING, WaveState.SOAKING):
                self._store.update_wave(
                    rollout.id, wave.index, state=WaveState.CANCELLED, finished_at=now
                )
        self._registry.record_event(
            event,
            reason=f"rollout {rollout.id}: {reason}",
            details={"rollout_id": rollout.id, "wave": rollout.current_wave},
        )
        logger.warning("rollout %s %s: %s", rollout.id, state.value, reason, extra=_ids(rollout))
        for device in self._store.devices(rollout.id):
            if device.state is RolloutDeviceState.PENDING:
                self._store.update_device(
                    rollout.id, device.device_id, state=RolloutDeviceState.SKIPPED
                )
            elif self._needs_revert(device):
                self._revert(rollout, device, reason=reason)

    def follow_reverts(self, rollout_id: str) -> None:
        """Record the end of each revert that the rollout sent and a device reported."""
        rollout = self._store.get(rollout_id)
        timeout_s = GateConfig.from_mapping(rollout.gates).deploy_timeout_s
        now = utc_now()
        reverting = [
            device
            for device in self._store.devices(rollout_id)
            if device.state is RolloutDeviceState.REVERTING
        ]
        deployments = self._store.deployments(d.revert_deployment_id for d in reverting)
        for device in reverting:
            assert device.revert_deployment_id is not None
            deployment = deployments.get(device.revert_deployment_id)
            if deployment is not None and deployment.state is DeploymentState.ACTIVE:
                self._set_device(
                    rollout,
                    device,
                    RolloutDeviceState.REVERTED,
                    reason=f"serving previous variant {device.previous_variant_id} again",
                )
            elif deployment is None or deployment.state in _FAILED_DEPLOYMENT_STATES:
                ended = deployment.state.value if deployment is not None else "missing"
                detail = deployment.reason if deployment is not None else ""
                self._revert_failed(rollout, device, f"revert deployment {ended}: {detail}")
            elif _elapsed(deployment.created_at, now) > timeout_s:
                self._revert_failed(
                    rollout,
                    device,
                    f"no report on the revert within {timeout_s:g} s; the controller sends "
                    "it again when the device reconnects",
                )

    # -- steps ----------------------------------------------------------------------

    def _start_wave(self, rollout: RolloutRow, wave: RolloutWaveRow, *, now: datetime) -> None:
        self._store.update_wave(rollout.id, wave.index, state=WaveState.DEPLOYING, started_at=now)
        devices = [d for d in self._store.devices(rollout.id) if d.wave == wave.index]
        self._registry.record_event(
            EventKind.ROLLOUT_WAVE_STARTED,
            reason=(
                f"rollout {rollout.id} wave {wave.index + 1} ({wave.spec}): deploying to "
                + ", ".join(d.device_id for d in devices)
            ),
            details={"rollout_id": rollout.id, "wave": wave.index},
        )
        logger.info(
            "rollout %s: wave %d (%s) deploys to %d devices",
            rollout.id,
            wave.index + 1,
            wave.spec,
            len(devices),
            extra=_ids(rollout),
        )
        gates = GateConfig.from_mapping(rollout.gates)
        for device in devices:
            self._deploy(rollout, device, gates, now=now)

    def _deploy(
        self, rollout: RolloutRow, device: RolloutDeviceRow, gates: GateConfig, *, now: datetime
    ) -> None:
        try:
            row = self._registry.get_device(device.device_id)
        except UnknownDeviceError:
            self._set_device(rollout, device, RolloutDeviceState.FAILED, reason="device deleted")
            return
        device = self._refresh_previous(rollout, device, row)
        baseline = None
        if device.previous_variant_id:
            window = self._store.served_latency(
                device.device_id,
                device.previous_variant_id,
                since=now - timedelta(seconds=gates.baseline_s),
                until=now,
            )
            if window.count >= gates.min_samples:
                baseline = window.median()
        if row.current_variant_id == device.variant_id:
            self._set_device(
                rollout,
                device,
                RolloutDeviceState.UNCHANGED,
                reason=f"already serving {device.variant_id}",
            )
            return
        deployment = self._deployer.deploy(
            row,
            model_id=rollout.model_id,
            variant_id=device.variant_id,
            reason=_deploy_reason(rollout, device),
        )
        self._store.update_device(
            rollout.id,
            device.device_id,
            state=RolloutDeviceState.DEPLOYING,
            deployment_id=deployment.id,
            deployed_at=now,
            baseline_p95_ms=baseline,
        )

    def _refresh_previous(
        self, rollout: RolloutRow, device: RolloutDeviceRow, row: DeviceRow
    ) -> RolloutDeviceRow:
        """Make what the device serves as its wave starts the variant a revert returns to.

        The previous variant is first taken when the rollout is created. A device whose
        first deployment was still being reported then serves a variant that the
        controller learns of only later.
        """
        serving = row.current_variant_id
        if not serving or serving == device.previous_variant_id:
            return device
        model_id = self._store.find_variant_model(row.profile_fingerprint, serving)
        if model_id is None:
            return device
        return self._store.update_device(
            rollout.id, device.device_id, previous_variant_id=serving, previous_model_id=model_id
        )

    def _follow_deployments(self, rollout: RolloutRow, gates: GateConfig, *, now: datetime) -> None:
        followed = [
            device
            for device in self._store.devices(rollout.id)
            if device.state in (RolloutDeviceState.DEPLOYING, RolloutDeviceState.UPDATED)
        ]
        deployments = self._store.deployments(d.deployment_id for d in followed)
        for device in followed:
            assert device.deployment_id is not None and device.deployed_at is not None
            deployment = deployments.get(device.deployment_id)
            if device.state is RolloutDeviceState.UPDATED:
                # The agent may still roll an active variant back, when its health check
                # fails after activation; the device then counts as failed.
                if deployment is not None and deployment.state is DeploymentState.ROLLED_BACK:
                    self._set_device(
                        rollout,
                        device,
                        RolloutDeviceState.FAILED,
                        reason=f"rolled back after activation: {deployment.reason}",
                    )
                continue
            if deployment is not None and deployment.state is DeploymentState.ACTIVE:
                self._store.update_device(
                    rollout.id,
                    device.device_id,
                    state=RolloutDeviceState.UPDATED,
                    active_at=deployment.updated_at,
                )
            elif deployment is None:
                self._set_device(
                    rollout, device, RolloutDeviceState.FAILED, reason="deployment deleted"
                )
            elif deployment.state in _FAILED_DEPLOYMENT_STATES:
                # The registry keeps the reason the controller gave unless the agent sent one.
                sent = _deploy_reason(rollout, device)
                detail = deployment.reason if deployment.reason != sent else "no reason given"
                self._set_device(
                    rollout,
                    device,
                    RolloutDeviceState.FAILED,
                    reason=f"deployment {deployment.state.value}: {detail}",
                )
            elif _elapsed(device.deployed_at, now) > gates.deploy_timeout_s:
                self._set_device(
                    rollout,
                    device,
                    RolloutDeviceState.FAILED,
                    reason=(
                        f"no report within {gates.deploy_timeout_s:g} s "
                        f"(deployment {deployment.state.value})"
                    ),
                )

    def _check_wave(
        self, rollout: RolloutRow, wave: RolloutWaveRow, gates: GateConfig, *, now: datetime
    ) -> None:
        devices = [d for d in self._store.devices(rollout.id) if d.wave == wave.index]
        failed = [d for d in devices if d.state is RolloutDeviceState.FAILED]
        if len(failed) / wave.size > gates.max_failure_rate:
            reasons = "; ".join(f"{d.device_id}: {d.reason}" for d in failed)
            self._fail_wave(
                rollout,
                wave,
                reason=(
                    f"wave {wave.index + 1} failed its health gate: {len(failed)} of "
                    f"{wave.size} deployments failed, above the allowed rate "
                    f"{gates.max_failure_rate:g} ({reasons})"
                ),
                result={"failed": [d.device_id for d in failed], "regressed": {}},
            )
            return
        if any(not d.state.is_settled for d in devices):
            return
        if wave.state is WaveState.DEPLOYING:
            self._store.update_wave(
                rollout.id, wave.index, state=WaveState.SOAKING, soak_started_at=now
            )
            logger.info(
                "rollout %s: wave %d deployed, soaking for %g s",
                rollout.id,
                wave.index + 1,
                gates.soak_s,
                extra=_ids(rollout),
            )
            wave = self._store.waves(rollout.id)[wave.index]
        assert wave.soak_started_at is not None
        if _elapsed(wave.soak_started_at, now) < gates.soak_s:
            return
        self._judge_latency(rollout, wave, devices, failed, gates, now=now)

    def _judge_latency(
        self,
        rollout: RolloutRow,
        wave: RolloutWaveRow,
        devices: list[RolloutDeviceRow],
        failed: list[RolloutDeviceRow],
        gates: GateConfig,
        *,
        now: datetime,
    ) -> None:
        regressed: dict[str, dict[str, float]] = {}
        unjudged: list[str] = []
        for device in devices:
            if device.state is not RolloutDeviceState.UPDATED:
                continue
            assert device.active_at is not None
            window = self._store.served_latency(
                device.device_id, device.variant_id, since=device.active_at, until=now
            )
            soak = window.median() if window.count >= gates.min_samples else None
            self._store.update_device(rollout.id, device.device_id, soak_p95_ms=soak)
            if soak is None or device.baseline_p95_ms is None:
                unjudged.append(device.device_id)
                continue
            ratio = soak / device.baseline_p95_ms if device.baseline_p95_ms > 0 else 1.0
            if ratio - 1 > gates.max_p95_regression:
                regressed[device.device_id] = {
                    "baseline_p95_ms": device.baseline_p95_ms,
                    "soak_p95_ms": soak,
                }
        result: dict[str, Any] = {
            "failed": [d.device_id for d in failed],
            "regressed": regressed,
            # NOTE: devices that served too few requests before or during the soak are
            # not judged on latency; only their deployment counts.
            "not_judged_on_latency": unjudged,
        }
        unhealthy = len(failed) + len(regressed)
        if unhealthy / wave.size > gates.max_failure_rate:
            figures = ", ".join(
                f"{device_id} p95 {v['baseline_p95_ms']:.2f} -> {v['soak_p95_ms']:.2f} ms"
                for device_id, v in regressed.items()
            )
            self._fail_wave(
                rollout,
                wave,
                reason=(
                    f"wave {wave.index + 1} failed its health gate: {unhealthy} of {wave.size} "
                    f"devices unhealthy, above the allowed rate {gates.max_failure_rate:g}; "
                    f"p95 rose more than {gates.max_p95_regression:.0%} on {figures}"
                ),
                result=result,
            )
            return
        self._pass_wave(rollout, wave, result, now=now)

    def _pass_wave(
        self, rollout: RolloutRow, wave: RolloutWaveRow, result: dict[str, Any], *, now: datetime
    ) -> None:
        self._store.update_wave(
            rollout.id, wave.index, state=WaveState.PASSED, finished_at=now, result=result
        )
        self._registry.record_event(
            EventKind.ROLLOUT_WAVE_PASSED,
            reason=f"rollout {rollout.id} wave {wave.index + 1} ({wave.spec}) passed its gate",
            details={"rollout_id": rollout.id, "wave": wave.index, **result},
        )
        logger.info(
            "rollout %s: wave %d passed its health gate",
            rollout.id,
            wave.index + 1,
            extra=_ids(rollout),
        )
        waves = self._store.waves(rollout.id)
        if wave.index + 1 < len(waves):
            self._store.update(rollout.id, current_wave=wave.index + 1)
            self.advance(rollout.id)
            return
        self._store.update(rollout.id, state=RolloutState.SUCCEEDED, finished_at=now)
        self._registry.record_event(
            EventKind.ROLLOUT_SUCCEEDED,
            reason=f"rollout {rollout.id} of model {rollout.model_id} reached every device",
            details={"rollout_id": rollout.id},
        )
        logger.info("rollout %s succeeded", rollout.id, extra=_ids(rollout))

    def _fail_wave(
        self, rollout: RolloutRow, wave: RolloutWaveRow, *, reason: str, result: dict[str, Any]
    ) -> None:
        self._store.update_wave(
            rollout.id, wave.index, state=WaveState.FAILED, finished_at=utc_now(), result=result
        )
        self.stop(rollout, state=RolloutState.HALTED, reason=reason, event=EventKind.ROLLOUT_HALTED)

    # -- devices --------------------------------------------------------------------

    def _revert(self, rollout: RolloutRow, device: RolloutDeviceRow, *, reason: str) -> None:
        previous = device.previous_variant_id
        if previous is None or device.previous_model_id is None:
            self._revert_failed(
                rollout,
                device,
                "the device served no variant known to the controller before the rollout; "
                "nothing to return to",
            )
            return
        try:
            row = self._registry.get_device(device.device_id)
            deployment = self._deployer.deploy(
                row,
                model_id=device.previous_model_id,
                variant_id=previous,
                reason=f"rollout {rollout.id} reverted: {reason}",
            )
        except (UnknownDeviceError, UnknownVariantError) as exc:
            self._revert_failed(rollout, device, str(exc))
            return
        self._store.update_device(
            rollout.id,
            device.device_id,
            state=RolloutDeviceState.REVERTING,
            revert_deployment_id=deployment.id,
        )
        self._registry.record_event(
            EventKind.ROLLOUT_REVERT,
            device_id=device.device_id,
            reason=f"rollout {rollout.id} returns the device to its previous variant: {reason}",
            from_variant=device.variant_id,
            to_variant=previous,
            details={"rollout_id": rollout.id, "deployment_id": deployment.id},
        )

    def _needs_revert(self, device: RolloutDeviceRow) -> bool:
        if device.state in (RolloutDeviceState.DEPLOYING, RolloutDeviceState.UPDATED):
            return True
        # A deployment that timed out is still pending: the agent may be installing it, or
        # get it when it reconnects. Sending the previous variant supersedes it.
        if device.state is not RolloutDeviceState.FAILED or device.deployment_id is None:
            return False
        deployment = self._registry.find_deployment(device.deployment_id)
        return deployment is not None and not deployment.state.is_terminal

    def _revert_failed(self, rollout: RolloutRow, device: RolloutDeviceRow, reason: str) -> None:
        logger.error(
            "rollout %s could not return device %s to variant %s: %s",
            rollout.id,
            device.device_id,
            device.previous_variant_id,
            reason,
            extra=_ids(rollout, device),
        )
        self._set_device(rollout, device, RolloutDeviceState.REVERT_FAILED, reason=reason)

    def _set_device(
        self,
        rollout: RolloutRow,
        device: RolloutDeviceRow,
        state: RolloutDeviceState,
        *,
        reason: str,
    ) -> None:
        self._store.update_device(rollout.id, device.device_id, state=state, reason=reason)
        if state in (RolloutDeviceState.FAILED, RolloutDeviceState.REVERT_FAILED):
            logger.warning(
                "rollout %s: device %s %s: %s",
                rollout.id,
                device.device_id,
                state.value,
                reason,
                extra=_ids(rollout, device),
            )


def _ids(rollout: RolloutRow, device: RolloutDeviceRow | None = None) -> dict[str, str]:
    # Context fields of structured log lines (edgefleet.logs.CONTEXT_FIELDS).
    ids = {"rollout_id": rollout.id}
    if device is not None:
        ids["device_id"] = device.device_id
    return ids


def _deploy_reason(rollout: RolloutRow, device: RolloutDeviceRow) -> str:
    return f"rollout {rollout.id} wave {device.wave + 1}: {device.reason}"


def _elapsed(since: datetime, now: datetime) -> float:
    return (now - since).total_seconds()
