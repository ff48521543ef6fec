"""Carrying out one ``DeployCommand``: download, verify, load, self-test, activate.

Each step follows ``edgefleet.agent.update.TRANSITIONS``: the deployer records the new
state in the state directory, reports it to the controller, acts, and on an error reports
FAILED with the reason while the previous model keeps serving.

A model that crashes the agent while loading (onnxruntime aborting on a malformed graph,
say) would otherwise crash it again each time the controller re-sends the deployment, so
load attempts are counted on disk per artifact and stop after ``MAX_LOAD_ATTEMPTS``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edgefleet.agent.backoff import Backoff
from edgefleet.agent.download import verify_artifact
from edgefleet.agent.errors import (
    ArtifactError,
    ControllerUnavailable,
    ModelLoadError,
    SelfTestError,
    StorageError,
)
from edgefleet.agent.runtime import ModelRuntime
from edgefleet.agent.store import AgentStore, UpdateRecord
from edgefleet.agent.transport import ControllerConnection
from edgefleet.agent.update import UpdateEvent, UpdateState, next_state
from edgefleet.errors import InvalidInputError
from edgefleet.ids import validate_sha256
from edgefleet.protos.v1 import fleet_pb2

__all__ = ["MAX_LOAD_ATTEMPTS", "Deployer"]

logger = logging.getLogger(__name__)

MAX_LOAD_ATTEMPTS = 3
# Attempts of one download before the deployment fails; the transfer resumes across them.
DOWNLOAD_ATTEMPTS = 5

# Errors that end a deployment for good: retrying the same command cannot fix them.
_FATAL_ERRORS = (ArtifactError, ModelLoadError, SelfTestError, StorageError, InvalidInputError)


class Deployer:
    """Runs deploy commands one at a time; see the module docstring."""

    def __init__(
        self,
        *,
        device_id: str,
        store: AgentStore,
        runtime: ModelRuntime,
        report: Callable[[fleet_pb2.DeploymentStatus], None],
        client: Callable[[], ControllerConnection | None],
        stopping: threading.Event,
        download_timeout_s: float = 900.0,
        backoff: Callable[[], Backoff] = Backoff,
    ) -> None:
        self._device_id = device_id
        self._store = store
        self._runtime = runtime
        self._report = report
        self._client = client
        self._stopping = stopping
        self._download_timeout_s = download_timeout_s
        self._backoff = backoff

    def deploy(self, command: fleet_pb2.Command) -> UpdateState:
        """Apply one deploy command and return its final state.

        A failed step becomes a FAILED status, not an exception. Only a state file that
        cannot be written raises (``StorageError``).
        """
        deploy = command.deploy
        manifest = deploy.manifest
        previous_variant = self._runtime.variant_id
        record = UpdateRecord(
            command_id=command.command_id,
            deployment_id=deploy.deployment_id,
            variant_id=manifest.variant_id,
            sha256=manifest.sha256,
            state=UpdateState.PENDING,
            load_attempts=self._prior_load_attempts(manifest.sha256),
        )
        step = _Step(
            store=self._store,
            report=self._report,
            device_id=self._device_id,
            record=record,
            previous_variant=previous_variant,
        )
        step.enter(UpdateState.PENDING)

        try:
            _validate_manifest(manifest)
            current = self._runtime.current
            if current is not None and current.manifest.sha256 == manifest.sha256:
                step.advance(UpdateEvent.ALREADY_SERVING, "already serving this variant")
            else:
                self._install_and_activate(step, manifest)
        except ControllerUnavailable as exc:
            # Not marked as applied: the controller re-sends the deployment after the
            # reconnect, and the download resumes from the part file.
            step.fail(str(exc))
            return UpdateState.FAILED
        except _FATAL_ERRORS as exc:
            step.fail(str(exc))
            self._store.mark_applied(command.command_id)
            return UpdateState.FAILED

        self._store.mark_applied(command.command_id)
        self._store.record_update(None)
        logger.info(
            "deployment %s is active: serving variant %s",
            deploy.deployment_id,
            manifest.variant_id,
            extra={"deployment_id": deploy.deployment_id},
        )
        return UpdateState.ACTIVE

    def _install_and_activate(self, step: _Step, manifest: fleet_pb2.VariantManifest) -> None:
        sha256, size = manifest.sha256, manifest.size_bytes
        step.advance(UpdateEvent.STARTED)
        if self._store.has_model(sha256):
            path = self._store.model_path(sha256)
        else:
            path = self._fetch(sha256, size)
        step.advance(UpdateEvent.DOWNLOADED)

        verify_artifact(path, sha256=sha256, size_bytes=size)
        if path.parent != self._store.models_dir:
            path = self._store.install(manifest, path)
        step.advance(UpdateEvent.VERIFIED)

        attempts = step.record.load_attempts
        if attempts >= MAX_LOAD_ATTEMPTS:
            raise ModelLoadError(
                f"variant {manifest.variant_id}: the agent stopped {attempts} times while "
                "loading it; not trying again"
            )
        step.save(load_attempts=attempts + 1)
        try:
            model = self._runtime.prepare(path, manifest)
        finally:
            # prepare() returned or raised, so the agent survived: only crashes count.
            step.save(load_attempts=0)
        self._runtime.activate(model)
        self._store.commit(sha256)
        removed = self._store.remove_unused_models()
        if removed:
            logger.info("removed unused models %s", ", ".join(removed))
        step.advance(UpdateEvent.LOADED)

    def _fetch(self, sha256: str, size: int) -> Path:
        part = self._store.part_path(sha256)
        backoff = self._backoff()
        attempt = 1
        while True:
            client = self._client()
            try:
                if client is None:
                    raise ControllerUnavailable("not connected to the controller")
                return client.fetch_artifact(
                    part,
                    device_id=self._device_id,
                    sha256=sha256,
                    size_bytes=size,
                    timeout_s=self._download_timeout_s,
                )
            except ControllerUnavailable as exc:
                if attempt == DOWNLOAD_ATTEMPTS or self._stopping.is_set():
                    raise
                delay = backoff.next_delay()
                logger.warning(
                    "download of %s failed (attempt %d of %d), retrying in %.1f s: %s",
                    sha256,
                    attempt,
                    DOWNLOAD_ATTEMPTS,
                    delay,
                    exc,
                )
                self._stopping.wait(delay)
                attempt += 1

    def _prior_load_attempts(self, sha256: str) -> int:
        prior = self._store.state.update
        return prior.load_attempts if prior is not None and prior.sha256 == sha256 else 0


@dataclasses.dataclass(slots=True)
class _Step:
    """The deployment in progress: saves and reports each state it enters."""

    store: AgentStore
    report: Callable[[fleet_pb2.DeploymentStatus], None]
    device_id: str
    record: UpdateRecord
    previous_variant: str

    def enter(self, state: UpdateState, message: str = "") -> None:
        self.save(state=state)
        logger.debug(
            "deployment %s entered %s",
            self.record.deployment_id,
            state.value,
            extra={"deployment_id": self.record.deployment_id},
        )
        self.report(self._status(state, message))

    def advance(self, event: UpdateEvent, message: str = "") -> None:
        self.enter(next_state(self.record.state, event), message)

    def fail(self, reason: str) -> None:
        logger.error(
            "deployment %s of variant %s failed in state %s: %s",
            self.record.deployment_id,
            self.record.variant_id,
            self.record.state.value,
            reason,
            extra={"deployment_id": self.record.deployment_id},
        )
        self.enter(next_state(self.record.state, UpdateEvent.FAILED), reason)

    def save(self, **changes: object) -> None:
        self.record = dataclasses.replace(self.record, **changes)
        self.store.record_update(self.record)

    def _status(self, state: UpdateState, message: str) -> fleet_pb2.DeploymentStatus:
        return fleet_pb2.DeploymentStatus(
            device_id=self.device_id,
            deployment_id=self.record.deployment_id,
            variant_id=self.record.variant_id,
            state=state.to_proto(),
            message=message,
            previous_variant_id=self.previous_variant,
            reported_at_ms=int(time.time() * 1000),
        )


def _validate_manifest(manifest: fleet_pb2.VariantManifest) -> None:
    if not manifest.variant_id:
        raise InvalidInputError("deploy command has no variant_id")
    validate_sha256(manifest.sha256)
    if manifest.size_bytes <= 0:
        raise InvalidInputError(f"variant {manifest.variant_id}: size_bytes must be positive")
