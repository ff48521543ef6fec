"""Deployments: recording them, sending their commands and following the device's reports.

``Deployer.deploy`` records a PENDING deployment, makes its variant the device's desired
one and sends a ``DeployCommand`` on the device's session, or leaves it for the next
session when the device is offline. ``Deployer.handle_status`` applies what the agent
reports: ACTIVE moves the device's current variant, FAILED and ROLLED_BACK leave it on the
variant it had, so the controller never retries a failing deployment on its own. A report
for a deployment that already ended (active, failed, rolled back or superseded) changes
nothing, except ROLLED_BACK for the device's latest deployment after it was active.

Every command carries the manifest signed for that device and deployment
(``edgefleet.controller.signing``). It is signed again at each send, so its expiry counts
from the time it leaves.
"""

from __future__ import annotations

import logging
import time

from edgefleet.controller.models import DeploymentRow, DeploymentState, DeviceRow, EventKind
from edgefleet.controller.ratelimit import ThrottledLog
from edgefleet.controller.registry import Registry
from edgefleet.controller.sessions import SessionRegistry
from edgefleet.controller.signing import ManifestSigner
from edgefleet.protos.v1 import fleet_pb2

__all__ = ["MAX_STATUS_MESSAGE_CHARS", "Deployer", "command_id_for"]

logger = logging.getLogger(__name__)

# A status message longer than this is cut, with an ellipsis, before it is stored as the
# deployment's and the event's reason and logged.
MAX_STATUS_MESSAGE_CHARS = 2000
# Ids from a rejected report are logged cut to this length.
_ID_LOG_CHARS = 80


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def command_id_for(deployment_id: str) -> str:
    """Return the command id of a deployment's DeployCommand.

    It is stable, so a command re-sent after a reconnect is applied once by an agent that
    already received it.
    """
    return f"deploy-{deployment_id}"


class Deployer:
    """Creates deployments and applies the agents' status reports; see the module docstring."""

    def __init__(
        self, registry: Registry, sessions: SessionRegistry, signer: ManifestSigner
    ) -> None:
        self._registry = registry
        self._sessions = sessions
        self._signer = signer
        # Rejected reports, one line per device and cause per minute.
        self._rejections = ThrottledLog(logger)

    def deploy(
        self,
        device: DeviceRow,
        *,
        model_id: str,
        variant_id: str,
        reason: str,
        rollback: bool = False,
    ) -> DeploymentRow:
        """Record a deployment of ``variant_id`` to ``device`` and send its command.

        ``rollback`` signs the manifest as a deliberate rollback, which an agent accepts
        even when its version is lower than the last one it applied.
        Raises ``UnknownVariantError`` when the variant is not one of the device's profile.
        """
        variant = self._registry.get_variant(model_id, device.profile_fingerprint, variant_id)
        deployment = self._registry.create_deployment(
            device.device_id,
            variant_id,
            previous_variant_id=device.current_variant_id,
            reason=reason,
            rollback=rollback,
        )
        self._registry.record_event(
            EventKind.DEPLOY_REQUESTED,
            device_id=device.device_id,
            reason=reason,
            from_variant=device.current_variant_id,
            to_variant=variant_id,
            details={"deployment_id": deployment.id, "sha256": variant.sha256},
        )
        self._send(deployment, variant.manifest)
        return deployment

    def resend(self, device: DeviceRow, *, model_id: str) -> DeploymentRow | None:
        """Send the command of the device's unfinished deployment again, if there is one."""
        deployment = self._registry.latest_deployment(device.device_id)
        if deployment is None or deployment.state.is_terminal:
            return None
        if deployment.variant_id != device.desired_variant_id:
            return None
        variant = self._registry.get_variant(
            model_id, device.profile_fingerprint, deployment.variant_id
        )
        self._send(deployment, variant.manifest)
        return deployment

    def _send(self, deployment: DeploymentRow, manifest: bytes) -> None:
        variant = fleet_pb2.VariantManifest.FromString(manifest)
        # Deployments recorded before manifests were versioned take their creation time.
        version = deployment.manifest_version or int(deployment.created_at.timestamp() * 1000)
        message = fleet_pb2.ControllerMessage(
            command=fleet_pb2.Command(
                command_id=command_id_for(deployment.id),
                issued_at_ms=int(time.time() * 1000),
                deploy=fleet_pb2.DeployCommand(
                    deployment_id=deployment.id,
                    manifest=variant,
                    signed_manifest=self._signer.sign(
                        variant,
                        device_id=deployment.device_id,
                        deployment_id=deployment.id,
                        version=version,
                        rollback=deployment.rollback,
                    ),
                ),
            )
        )
        ids = {"device_id": deployment.device_id, "deployment_id": deployment.id}
        if self._sessions.send(deployment.device_id, message):
            logger.info(
                "sent deployment %s of variant %s to device %s",
                deployment.id,
                deployment.variant_id,
                deployment.device_id,
                extra=ids,
            )
        else:
            logger.info(
                "device %s is offline; deployment %s of variant %s is sent when it connects",
                deployment.device_id,
                deployment.id,
                deployment.variant_id,
                extra=ids,
            )

    def handle_status(self, device_id: str, status: fleet_pb2.DeploymentStatus) -> bool:
        """Apply a status report; returns whether it moved the deployment to a final state.

        Reports that name another device in the payload, reports for unknown deployments or
        another device's, and reports for a deployment that already ended are logged and
        ignored.
        """
        ids = {"device_id": device_id, "deployment_id": _cut(status.deployment_id, _ID_LOG_CHARS)}
        if status.device_id != device_id:
            # The topic or session names the device, as for registrations.
            self._rejections.log(
                (device_id, "device"),
                "device %s sent a status naming device %r; ignoring it",
                device_id,
                _cut(status.device_id, _ID_LOG_CHARS),
                extra=ids,
            )
            return False
        deployment = self._registry.find_deployment(status.deployment_id)
        if deployment is None or deployment.device_id != device_id:
            if deployment is None:
                line = "device %s reported status for unknown deployment %r; ignoring it"
            else:
                line = (
                    "device %s reported status for deployment %r, which belongs to another "
                    "device; ignoring it"
                )
            self._rejections.log(
                (device_id, "deployment"),
                line,
                device_id,
                _cut(status.deployment_id, _ID_LOG_CHARS),
                extra=ids,
            )
            return False
        try:
            state = DeploymentState.from_proto(status.state)
        except ValueError as exc:
            self._rejections.log(
                (device_id, "state"),
                "device %s sent an invalid deployment status: %s",
                device_id,
                exc,
                extra=ids,
            )
            return False
        if deployment.state.is_terminal and not self._rolls_back_latest(deployment, state):
            if state is deployment.state:
                # A redelivered report (MQTT QoS 1, or sent again after a reconnect) is
                # normal and changes nothing.
                logger.debug(
                    "device %s reported %s again for deployment %s; ignoring it",
                    device_id,
                    state.value,
                    deployment.id,
                    extra=ids,
                )
                return False
            # A report that would rewrite the deployment's history.
            self._rejections.log(
                (device_id, "ended"),
                "device %s reported %s for deployment %s, which already ended %s; ignoring it",
                device_id,
                state.value,
                deployment.id,
                deployment.state.value,
                extra=ids,
            )
            return False

        message = _cut(status.message, MAX_STATUS_MESSAGE_CHARS)
        self._registry.update_deployment(deployment.id, state=state, reason=message or None)
        if state is DeploymentState.ACTIVE:
            self._on_active(device_id, deployment, status)
        elif state is DeploymentState.FAILED:
            self._on_failed(device_id, deployment, status, message, kind=EventKind.DEPLOY_FAILED)
        elif state is DeploymentState.ROLLED_BACK:
            self._on_failed(device_id, deployment, status, message, kind=EventKind.ROLLED_BACK)
        return state.is_terminal

    def _rolls_back_latest(self, deployment: DeploymentRow, state: DeploymentState) -> bool:
        """Return whether ``state`` rolls back the device's latest, active deployment.

        It is the one change accepted after a final state, because a rollout counts a
        device whose active variant was rolled back as failed.
        """
        if (
            deployment.state is not DeploymentState.ACTIVE
            or state is not DeploymentState.ROLLED_BACK
        ):
            return False
        latest = self._registry.latest_deployment(deployment.device_id)
        return latest is not None and latest.id == deployment.id

    def _on_active(
        self, device_id: str, deployment: DeploymentRow, status: fleet_pb2.DeploymentStatus
    ) -> None:
        device = self._registry.update_device(device_id, current_variant_id=deployment.variant_id)
        self._registry.record_event(
            EventKind.DEPLOYED,
            device_id=device_id,
            reason=f"deployment {deployment.id} is active",
            from_variant=status.previous_variant_id or deployment.previous_variant_id,
            to_variant=deployment.variant_id,
            details={"deployment_id": deployment.id},
        )
        logger.info(
            "device %s is serving variant %s (deployment %s)",
            device_id,
            device.current_variant_id,
            deployment.id,
            extra={"device_id": device_id, "deployment_id": deployment.id},
        )

    def _on_failed(
        self,
        device_id: str,
        deployment: DeploymentRow,
        status: fleet_pb2.DeploymentStatus,
        message: str,
        *,
        kind: EventKind,
    ) -> None:
        device = self._registry.get_device(device_id)
        # The agent keeps serving the variant it had; a report naming it is the most
        # direct evidence of what that is.
        current = status.previous_variant_id or device.current_variant_id
        fields: dict[str, object] = {"current_variant_id": current}
        if device.desired_variant_id == deployment.variant_id:
            fields["desired_variant_id"] = current
        self._registry.update_device(device_id, **fields)
        self._registry.record_event(
            kind,
            device_id=device_id,
            reason=message or f"deployment {deployment.id} ended {kind.value}",
            from_variant=deployment.variant_id,
            to_variant=current,
            details={"deployment_id": deployment.id},
        )
        logger.warning(
            "deployment %s of variant %s to device %s %s: %s; the device stays on %s",
            deployment.id,
            deployment.variant_id,
            device_id,
            "failed" if kind is EventKind.DEPLOY_FAILED else "was rolled back",
            message or "no reason given",
            current or "no variant",
            extra={"device_id": device_id, "deployment_id": deployment.id},
        )
