"""Carrying out one ``DeployCommand`` through the update state machine.

``Deployer.deploy`` runs one deployment and ``Deployer.resume`` picks up the one a crash
interrupted. Both drive an ``_Update``, which has one method per step of
``edgefleet.agent.update.TRANSITIONS``: it records the state in ``state.json`` and reports
it to the controller before running the step, and the step's outcome is the event that
selects the next state. Errors become events too: before the swap a failed step leads to
FAILED with the committed model still serving, and after it to a rollback.

Runs of one deployment are counted on disk (``UpdateRecord.attempts``), restarts
included, so a model that crashes the agent while it loads stops being retried after
``MAX_ATTEMPTS``. Transfers cut by the network do not count: the controller re-sends the
deployment after the reconnect and the download resumes from the part file.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from google.protobuf import json_format
from google.protobuf.message import DecodeError

from edgefleet.agent import trust
from edgefleet.agent.backoff import Backoff
from edgefleet.agent.download import verify_artifact
from edgefleet.agent.errors import (
    AgentError,
    ArtifactError,
    ControllerUnavailable,
    CorruptArtifactError,
    ModelLoadError,
    SelfTestError,
    StorageError,
)
from edgefleet.agent.identity import DeviceIdentity
from edgefleet.agent.runtime import HealthReport, LoadedModel, ModelRuntime, check_health
from edgefleet.agent.store import AgentStore, UpdateRecord
from edgefleet.agent.transport import ControllerConnection
from edgefleet.agent.trust import ManifestRejected
from edgefleet.agent.update import RESUMABLE_STATES, UpdateEvent, UpdateState, next_state
from edgefleet.errors import InvalidInputError
from edgefleet.ids import validate_sha256
from edgefleet.protos.v1 import fleet_pb2

__all__ = ["MAX_ATTEMPTS", "Deployer"]

logger = logging.getLogger(__name__)

# Runs of one manifest before the agent gives up on it. Three allows one crash for an
# unrelated reason (a power cut) and one retry, and stops a crash loop soon after.
MAX_ATTEMPTS = 3
# Failed transfer attempts within one run before it fails; each resumes the part file.
DOWNLOAD_ATTEMPTS = 5
# Fresh downloads after a corrupt chunk or file within one run before it fails.
MAX_REFETCHES = 2
# How often a fetch waiting for a connection checks again.
_POLL_S = 0.2

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
        latency_budget_ms: float,
        download_timeout_s: float = 900.0,
        backoff: Callable[[], Backoff] = Backoff,
        max_attempts: int = MAX_ATTEMPTS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        # Time from the last failed health check to the committed model serving again.
        self.last_rollback_ms: float | None = None
        self._device_id = device_id
        self._store = store
        self._runtime = runtime
        self._report = report
        self._client = client
        self._stopping = stopping
        self._latency_budget_ms = latency_budget_ms
        self._download_timeout_s = download_timeout_s
        self._backoff = backoff
        self._max_attempts = max_attempts

    def deploy(self, command: fleet_pb2.Command) -> UpdateState:
        """Apply one deploy command and return its final state.

        A failed step becomes a FAILED or ROLLED_BACK status, not an exception. Only a
        state file that cannot be written raises (``StorageError``).
        """
        deploy = command.deploy
        manifest = _unverified_variant(deploy)
        if self._store.read_only:
            return self._reject_read_only(deploy, manifest)
        prior = self._store.state.update
        # Runs are counted per deployment: the controller bounds its own retries with new
        # deployments, so only a crash loop within one deployment must stop here.
        same_manifest = (
            prior is not None
            and prior.sha256 == manifest.sha256
            and prior.deployment_id == deploy.deployment_id
        )
        record = UpdateRecord(
            command_id=command.command_id,
            deployment_id=deploy.deployment_id,
            variant_id=manifest.variant_id,
            sha256=manifest.sha256,
            state=UpdateState.PENDING,
            attempts=(prior.attempts if same_manifest and prior else 0) + 1,
            command_json=json_format.MessageToJson(deploy, indent=None),
        )
        update = self._update(record, deploy)
        update.enter(UpdateState.PENDING)

        try:
            _validate_manifest(manifest)
        except InvalidInputError as exc:
            update.fail(str(exc))
            self._store.mark_applied(command.command_id)
            return update.state

        current = self._runtime.current
        # A model serving without its manifest runs the whole update, which verifies the
        # file on disk against the new manifest and restores the manifest.
        if (
            current is not None
            and current.has_manifest
            and current.manifest.sha256 == manifest.sha256
        ):
            update.advance(UpdateEvent.ALREADY_SERVING, "already serving this variant")
            self._store.mark_applied(command.command_id)
            self._store.record_update(None)
            return update.state
        return self._run(update, command_id=command.command_id)

    def resume(self) -> UpdateState | None:
        """Continue or roll back the update a crash interrupted; ``None`` if there is none."""
        record = self._store.state.update
        if record is None or record.state.terminal:
            return None
        if self._store.read_only:
            # The controller re-sends its deployment, which fails with the reason.
            logger.error(
                "cannot resume deployment %s: the state directory is read-only",
                record.deployment_id,
                extra={"deployment_id": record.deployment_id},
            )
            return None
        try:
            deploy = record.deploy_command()
        except StorageError as exc:
            logger.error(
                "cannot resume deployment %s: %s",
                record.deployment_id,
                exc,
                extra={"deployment_id": record.deployment_id},
            )
            self._store.record_update(dataclasses.replace(record, state=UpdateState.FAILED))
            return UpdateState.FAILED

        logger.warning(
            "resuming deployment %s of variant %s, interrupted in state %s",
            record.deployment_id,
            record.variant_id,
            record.state.value,
            extra={"deployment_id": record.deployment_id},
        )
        if record.state in RESUMABLE_STATES:
            record = dataclasses.replace(record, attempts=record.attempts + 1)
        update = self._update(record, deploy)
        return self._run(update, command_id=record.command_id, resumed=True)

    def _reject_read_only(
        self, deploy: fleet_pb2.DeployCommand, manifest: fleet_pb2.VariantManifest
    ) -> UpdateState:
        """Report FAILED for a deployment that a read-only state directory cannot take."""
        serving = self._runtime.variant_id or "no variant"
        message = (
            f"cannot deploy variant {manifest.variant_id}: the state directory "
            f"{self._store.root} is on a read-only file system, which the kernel does to a "
            f"failing SD card; the device keeps serving {serving}. Check or replace the "
            "storage, then restart the agent"
        )
        logger.error(
            "deployment %s failed: %s",
            deploy.deployment_id,
            message,
            extra={"deployment_id": deploy.deployment_id},
        )
        self._report(
            fleet_pb2.DeploymentStatus(
                device_id=self._device_id,
                deployment_id=deploy.deployment_id,
                variant_id=manifest.variant_id,
                state=UpdateState.FAILED.to_proto(),
                message=message,
                previous_variant_id=self._runtime.variant_id,
                reported_at_ms=int(time.time() * 1000),
            )
        )
        return UpdateState.FAILED

    def _update(self, record: UpdateRecord, deploy: fleet_pb2.DeployCommand) -> _Update:
        return _Update(
            deployer=self,
            record=record,
            command=deploy,
            manifest=_unverified_variant(deploy),
            previous_variant=self._runtime.variant_id,
        )

    def _run(self, update: _Update, *, command_id: str, resumed: bool = False) -> UpdateState:
        if update.record.attempts > self._max_attempts:
            update.save()
            update.fail(
                f"gave up on variant {update.record.variant_id} after "
                f"{self._max_attempts} attempts; start a new deployment to try again"
            )
            self._store.mark_applied(command_id)
            return update.state

        try:
            state = update.run(resumed=resumed)
        except ControllerUnavailable as exc:
            # Not marked as applied, and not counted: the controller re-sends the
            # deployment after the reconnect, and the download resumes from the part file.
            update.save(attempts=update.record.attempts - 1)
            update.fail(str(exc))
            return update.state

        self._store.mark_applied(command_id)
        return state

    # -- helpers for the steps ---------------------------------------------------------

    def _verify_signature(self, command: fleet_pb2.DeployCommand) -> trust.Manifest | None:
        """Check the signed manifest against the trusted keys; ``None`` before enrollment.

        A device with trusted keys rejects unsigned, forged, replayed and expired manifests
        (``trust.ManifestRejected``). Expiry is checked against the device clock, but never
        below the latest controller time seen, so a clock reset to 1970 cannot make an
        expired manifest look fresh.
        """
        keys = trust.load_trusted_keys(self._store.root)
        if not keys:
            # NOTE: without enrollment only the artifact's size and sha256 are checked.
            return None
        state = self._store.state
        floor_ms = state.time_floor_ms
        identity = DeviceIdentity.load(self._store.root)
        if identity is not None:
            floor_ms = max(floor_ms, identity.controller_time_ms)
        return trust.verify_manifest(
            command,
            keys,
            now=trust.trusted_now(self._clock(), floor_ms=floor_ms),
            last_version=state.manifest_version,
            device_id=self._device_id,
        )

    def _fetch(self, sha256: str, size: int) -> Path:
        """Download into the part file, retrying transfers that drop; see ``DOWNLOAD_ATTEMPTS``."""
        part = self._store.part_path(sha256)
        backoff = self._backoff()
        deadline = time.monotonic() + self._download_timeout_s
        attempt = 1
        while True:
            client = self._client()
            if client is None:
                # Not connected yet (right after a restart) or between reconnects.
                if self._stopping.is_set() or time.monotonic() > deadline:
                    raise ControllerUnavailable("not connected to the controller")
                self._stopping.wait(_POLL_S)
                continue
            try:
                return client.fetch_artifact(
                    part,
                    device_id=self._device_id,
                    sha256=sha256,
                    size_bytes=size,
                    timeout_s=max(1.0, deadline - time.monotonic()),
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


@dataclasses.dataclass(slots=True)
class _Update:
    """One run of the state machine for one manifest: saves and reports each state."""

    deployer: Deployer
    record: UpdateRecord
    command: fleet_pb2.DeployCommand
    manifest: fleet_pb2.VariantManifest
    previous_variant: str
    # The model that served before the swap, kept to restore it without a reload.
    replaced: LoadedModel | None = None
    candidate: LoadedModel | None = None
    refetches: int = 0
    rollback_started: float = 0.0
    # Message of the last state entered; the rollback reports the failed check's reason.
    last_message: str = ""

    @property
    def state(self) -> UpdateState:
        return self.record.state

    def run(self, *, resumed: bool = False) -> UpdateState:
        """Run steps from the recorded state until a final state; returns it."""
        if resumed:
            self._resume_event()
        elif self.state is UpdateState.PENDING:
            self.advance(UpdateEvent.STARTED)
        while not self.state.terminal:
            step = _STEPS[self.state]
            event, message = step(self)
            self.advance(event, message)
        return self.state

    def _resume_event(self) -> None:
        """Enter the state to resume in, after a restart; the caller runs its step."""
        state = self.state
        if state is UpdateState.PENDING:
            self.advance(UpdateEvent.STARTED)
        elif state in RESUMABLE_STATES:
            self.enter(state, "resumed after an agent restart")
        elif state is UpdateState.LOADING:
            # The swap happened in memory only if at all; the restart serves the
            # committed model. The crash may have been this model's doing.
            self.advance(UpdateEvent.FAILED, "the agent restarted while loading this model")
        elif state is UpdateState.HEALTH_CHECK:
            self.advance(UpdateEvent.UNHEALTHY, "the agent restarted during the health check")
        else:
            self.enter(state, "resumed after an agent restart")

    # -- steps: each returns the event that picks the next state ------------------------

    def fetch(self) -> tuple[UpdateEvent, str]:
        sha256, size = self.manifest.sha256, self.manifest.size_bytes
        store = self.deployer._store
        if store.model_path(sha256).is_file():
            # The next step checks the file against the manifest, whether or not the
            # manifest file next to it survived.
            return UpdateEvent.DOWNLOADED, "already on disk"
        try:
            self.deployer._fetch(sha256, size)
        except CorruptArtifactError as exc:
            return self._corrupt(exc)
        except ControllerUnavailable:
            raise
        except _FATAL_ERRORS as exc:
            return UpdateEvent.FAILED, str(exc)
        return UpdateEvent.DOWNLOADED, ""

    def verify(self) -> tuple[UpdateEvent, str]:
        store = self.deployer._store
        sha256 = self.manifest.sha256
        path = store.model_path(sha256)
        if not path.is_file():
            path = store.part_path(sha256)
        try:
            signed = self.deployer._verify_signature(self.command)
            verify_artifact(path, sha256=sha256, size_bytes=self.manifest.size_bytes)
        except CorruptArtifactError as exc:
            return self._corrupt(exc)
        except (*_FATAL_ERRORS, ManifestRejected) as exc:
            return UpdateEvent.FAILED, str(exc)
        if signed is None:
            return UpdateEvent.VERIFIED, "unsigned: the device trusts no signing key yet"
        self.deployer._store.accept_manifest(signed.version, signed.issued_at_ms)
        return UpdateEvent.VERIFIED, f"signed by key {signed.key_id}, version {signed.version}"

    def install(self) -> tuple[UpdateEvent, str]:
        store = self.deployer._store
        sha256 = self.manifest.sha256
        part = store.part_path(sha256)
        try:
            if part.exists():
                store.install(self.manifest, part)
            elif store.model_path(sha256).is_file():
                # Verified in place: rewrite its manifest, which may be missing or damaged.
                store.restore_manifest(self.manifest)
            else:
                return UpdateEvent.FAILED, f"verified artifact {part} disappeared before install"
        except StorageError as exc:
            return UpdateEvent.FAILED, str(exc)
        return UpdateEvent.INSTALLED, ""

    def activate(self) -> tuple[UpdateEvent, str]:
        deployer = self.deployer
        runtime = deployer._runtime
        try:
            model = runtime.prepare(deployer._store.model_path(self.manifest.sha256), self.manifest)
        except (ModelLoadError, SelfTestError, StorageError) as exc:
            return UpdateEvent.FAILED, str(exc)
        self.candidate = model
        self.replaced = runtime.activate(model)
        return UpdateEvent.ACTIVATED, ""

    def health_check(self) -> tuple[UpdateEvent, str]:
        model = self.candidate
        if model is None:
            return UpdateEvent.UNHEALTHY, "the new model is not loaded"
        budget_ms = self.deployer._latency_budget_ms
        try:
            report = check_health(model, latency_budget_ms=budget_ms)
            verdict = self._judge_latency(report)
        except AgentError as exc:
            verdict = f"health check failed: {exc}"
        if verdict is not None:
            self.rollback_started = time.perf_counter()
            return UpdateEvent.UNHEALTHY, verdict
        self.commit()
        return UpdateEvent.HEALTHY, (
            f"health check passed: p95 {report.latency_p95_ms:.3f} ms per row "
            f"(budget {budget_ms:g} ms)"
        )

    def _judge_latency(self, report: HealthReport) -> str | None:
        """Return why the new model's latency fails it, or ``None`` if it passes.

        Over budget fails the model only if the model it replaced is faster right now. A
        device under CPU contention may be stepping down precisely because every model is
        over budget, and rolling back to a slower model would make that worse.
        """
        if report.within_budget:
            return None
        over = (
            f"p95 latency {report.latency_p95_ms:.4g} ms per row exceeds the device's budget "
            f"of {report.latency_budget_ms:g} ms"
        )
        replaced = self.replaced
        if replaced is None:
            logger.warning("new model kept although its %s: no model to return to", over)
            return None
        if not replaced.has_manifest:
            # It has no self-test input to time, and it is often this very file.
            logger.warning("new model kept although its %s: the replaced one has no manifest", over)
            return None
        baseline = check_health(replaced, latency_budget_ms=report.latency_budget_ms)
        if report.latency_p95_ms <= baseline.latency_p95_ms:
            logger.warning(
                "new model kept although its %s: the previous one is slower (%.3f ms)",
                over,
                baseline.latency_p95_ms,
            )
            return None
        return (
            f"health check failed: {over}, and the previous variant {replaced.variant_id} is "
            f"faster ({baseline.latency_p95_ms:.3f} ms)"
        )

    def roll_back(self) -> tuple[UpdateEvent, str]:
        """Serve the committed model again: from memory if it is there, else from disk."""
        deployer = self.deployer
        store, runtime = deployer._store, deployer._runtime
        committed = store.state.current
        current = runtime.current
        try:
            if current is not None and current.manifest.sha256 == committed:
                pass  # a restart already restored it
            elif self.replaced is not None and self.replaced.manifest.sha256 == committed:
                runtime.restore(self.replaced)
            elif committed is None:
                runtime.restore(None)
            else:
                manifest = store.load_manifest(committed)
                runtime.restore(runtime.prepare(store.model_path(committed), manifest))
        except (ModelLoadError, SelfTestError, StorageError) as exc:
            return UpdateEvent.FAILED, f"rollback to the committed model failed: {exc}"
        if self.rollback_started:
            deployer.last_rollback_ms = (time.perf_counter() - self.rollback_started) * 1000.0
            logger.info(
                "committed model serving again %.1f ms after the failed health check",
                deployer.last_rollback_ms,
                extra={"deployment_id": self.record.deployment_id},
            )
        return UpdateEvent.ROLLED_BACK, self.last_message

    # -- bookkeeping --------------------------------------------------------------------

    def commit(self) -> None:
        """Record the new model as committed, and the deployment as ACTIVE, in one write."""
        store = self.deployer._store
        store.commit(self.manifest.sha256, update=None)
        removed = store.remove_unused_models()
        if removed:
            logger.info("removed unused models %s", ", ".join(removed))

    def _corrupt(self, exc: CorruptArtifactError) -> tuple[UpdateEvent, str]:
        self.refetches += 1
        if self.refetches > MAX_REFETCHES:
            return UpdateEvent.FAILED, f"{exc}; gave up after {MAX_REFETCHES} fresh downloads"
        logger.warning("%s; downloading it again", exc)
        return UpdateEvent.CORRUPT, str(exc)

    def enter(self, state: UpdateState, message: str = "") -> None:
        if state is not UpdateState.ACTIVE:
            # ACTIVE was written by ``commit`` together with the committed model.
            self.save(state=state)
        else:
            self.record = dataclasses.replace(self.record, state=state)
        ids = {"deployment_id": self.record.deployment_id}
        logger.debug("deployment %s entered %s", self.record.deployment_id, state.value, extra=ids)
        if state.terminal and state is not UpdateState.ACTIVE:
            logger.error(
                "deployment %s of variant %s ended %s: %s",
                self.record.deployment_id,
                self.record.variant_id,
                state.value,
                message,
                extra=ids,
            )
        elif state is UpdateState.ACTIVE:
            logger.info(
                "deployment %s is active: serving variant %s",
                self.record.deployment_id,
                self.record.variant_id,
                extra=ids,
            )
        self.last_message = message
        self.deployer._report(self._status(state, message))

    def advance(self, event: UpdateEvent, message: str = "") -> None:
        self.enter(next_state(self.state, event), message)

    def fail(self, reason: str) -> None:
        self.advance(UpdateEvent.FAILED, reason)

    def save(self, **changes: object) -> None:
        self.record = dataclasses.replace(self.record, **changes)
        self.deployer._store.record_update(self.record)

    def _status(self, state: UpdateState, message: str) -> fleet_pb2.DeploymentStatus:
        return fleet_pb2.DeploymentStatus(
            device_id=self.deployer._device_id,
            deployment_id=self.record.deployment_id,
            variant_id=self.record.variant_id,
            state=state.to_proto(),
            message=message,
            previous_variant_id=self.previous_variant,
            reported_at_ms=int(time.time() * 1000),
        )


_STEPS: dict[UpdateState, Callable[[_Update], tuple[UpdateEvent, str]]] = {
    UpdateState.DOWNLOADING: _Update.fetch,
    UpdateState.VERIFYING: _Update.verify,
    UpdateState.INSTALLING: _Update.install,
    UpdateState.LOADING: _Update.activate,
    UpdateState.HEALTH_CHECK: _Update.health_check,
    UpdateState.ROLLING_BACK: _Update.roll_back,
}


def _unverified_variant(deploy: fleet_pb2.DeployCommand) -> fleet_pb2.VariantManifest:
    """Return the variant to fetch; the verify step checks it against the signature."""
    if deploy.HasField("manifest") or not deploy.HasField("signed_manifest"):
        return deploy.manifest
    payload = fleet_pb2.ManifestPayload()
    try:
        payload.ParseFromString(deploy.signed_manifest.payload)
    except DecodeError:
        return fleet_pb2.VariantManifest()  # rejected by _validate_manifest
    return payload.variant


def _validate_manifest(manifest: fleet_pb2.VariantManifest) -> None:
    if not manifest.variant_id:
        raise InvalidInputError("deploy command has no variant_id")
    validate_sha256(manifest.sha256)
    if manifest.size_bytes <= 0:
        raise InvalidInputError(f"variant {manifest.variant_id}: size_bytes must be positive")
