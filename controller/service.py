"""The ``Controller``: registry, artifact store, planner, policy engine and sessions wired
into one service.

Transports call into it (``grpc_server.FleetServicer`` and ``mqtt_endpoint.MqttEndpoint``)
through the same calls, and it reaches a connected device only through its
``DeviceSession``, so its logic does not depend on the transport a device uses; it owns no
network code besides starting the endpoints in ``serve_grpc`` and ``serve_mqtt``. Every
public call may run on any transport thread, so per-device policy state sits behind one
lock, and database access goes through the registry's short transactions.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from edgefleet.controller.addresses import is_loopback
from edgefleet.controller.artifacts import ArtifactStore
from edgefleet.controller.calibration import DeviceCalibration, HostCalibration
from edgefleet.controller.config import ControllerConfig
from edgefleet.controller.db import Database, open_database
from edgefleet.controller.deployments import Deployer
from edgefleet.controller.enrollment import CertificateRegistry, NewToken
from edgefleet.controller.errors import (
    AuthenticationError,
    ControllerStateError,
    InvalidTelemetryError,
    PlanningError,
    RateLimitedError,
    RolloutConflictError,
    UnknownDeviceError,
    UnknownVariantError,
)
from edgefleet.controller.ingest import IngestStats, OnStored, RecentSamples, TelemetryIngest
from edgefleet.controller.lock import DataDirLock
from edgefleet.controller.models import (
    DeploymentRow,
    DeploymentState,
    DeviceRow,
    DeviceState,
    EventKind,
    EventRow,
    ModelRow,
    PlanState,
    VariantRow,
    utc_now,
)
from edgefleet.controller.planning import (
    PlanJob,
    Planner,
    PlannerWorker,
    PlanOutcome,
    check_model_files,
    model_digest,
)
from edgefleet.controller.policy import Decision, DeviceView, PolicyAction, Rung, evaluate
from edgefleet.controller.presence import PresenceChanges, PresenceWatch
from edgefleet.controller.ratelimit import TokenBucket
from edgefleet.controller.redeploy import DueRedeploy, RedeploySchedule
from edgefleet.controller.registry import DeviceRegistration, Registry
from edgefleet.controller.requests import RegistrationRequest
from edgefleet.controller.rollouts import RolloutManager
from edgefleet.controller.sessions import TAKEOVER_WINDOW_S, DeviceSession, SessionRegistry
from edgefleet.controller.telemetry import DropCounter, TelemetryRecord, validate_sample
from edgefleet.controller.trust import ControllerTrust
from edgefleet.errors import InvalidInputError
from edgefleet.profiles import DeviceProfile
from edgefleet.protos.mqtt import DEFAULT_SHARE_GROUP, BrokerSettings
from edgefleet.protos.v1 import fleet_pb2

__all__ = ["Controller", "ControllerState"]

logger = logging.getLogger(__name__)

# Device ids per query when placing queued devices, well under SQLite's bound parameters.
_PLACEMENT_QUERY_IDS = 500

_POLICY_EVENT_KINDS = {
    PolicyAction.STEP_DOWN: EventKind.STEPPED_DOWN,
    PolicyAction.STEP_UP: EventKind.STEPPED_UP,
    PolicyAction.RECOMPRESS: EventKind.RECOMPRESSED,
}


class ControllerState(StrEnum):
    """Lifecycle of a ``Controller``: created, running, then stopping and stopped."""

    CREATED = "created"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass
class _DeviceRuntime:
    """In-memory policy state of one device; rebuilt from telemetry after a restart."""

    samples: deque[TelemetryRecord]
    # NOTE: kept in memory only, so a restart loses the cooldown of a recent action.
    last_action_at: datetime | None = None
    last_alert_at: datetime | None = None


class Controller:
    """The edgefleet controller service; see the module docstring.

    Call ``start`` before anything else and ``shutdown`` at the end; ``serve_grpc`` opens
    the gRPC endpoint.
    """

    def __init__(
        self,
        config: ControllerConfig | None = None,
        *,
        data_dir: str | Path,
        database_url: str | None = None,
    ) -> None:
        self.config = config or ControllerConfig()
        self.data_dir = Path(data_dir)
        self.database_url = database_url or f"sqlite:///{self.data_dir / 'edgefleet.db'}"
        self._lock = DataDirLock(self.data_dir)
        self.sessions = SessionRegistry()
        self.host_calibration = HostCalibration(duration_s=self.config.host_calibration_duration_s)
        self.telemetry_drops = DropCounter()
        # Used by the ingest thread only.
        self._recent_samples = RecentSamples()
        self.connect_limiter = TokenBucket(
            self.config.connect_rate_per_s, self.config.connect_burst
        )
        self._ingest: TelemetryIngest | None = None
        self._state = ControllerState.CREATED
        self._state_lock = threading.Lock()
        # Thread counts with a host calibration queued on the planner thread.
        self._calibrations_queued: set[int] = set()
        # Devices waiting for placement; one planner task places all of them.
        self._placements_queued: set[str] = set()
        self._runtime: dict[str, _DeviceRuntime] = {}
        self._recompressing: set[tuple[str, str]] = set()
        self._stop = threading.Event()
        self._retention_thread: threading.Thread | None = None
        self._grpc_server: Any = None
        self._enroll_server: Any = None
        self.enroll_port: int | None = None
        self._revoked: frozenset[str] = frozenset()
        self._revocation_thread: threading.Thread | None = None
        self._redeploys = RedeploySchedule(
            initial_s=self.config.redeploy_initial_s,
            max_s=self.config.redeploy_max_s,
            max_attempts=self.config.redeploy_max_attempts,
        )
        self._redeploy_thread: threading.Thread | None = None
        self._presence = (
            PresenceWatch(self.config.presence_timeout_s)
            if self.config.presence_timeout_s > 0
            else None
        )
        self._presence_thread: threading.Thread | None = None
        # Held while a session is removed and its device set offline, and while quiet
        # devices are set online again.
        self._session_change_lock = threading.Lock()
        self._trust: ControllerTrust | None = None
        self._mqtt_endpoint: Any = None
        self._database: Database | None = None
        self._registry: Registry | None = None
        self._artifacts: ArtifactStore | None = None
        self._deployer: Deployer | None = None
        self._planner: Planner | None = None
        self._worker: PlannerWorker | None = None
        self._rollouts: RolloutManager | None = None

    # -- lifecycle ------------------------------------------------------------------

    @property
    def state(self) -> ControllerState:
        return self._state

    @property
    def registry(self) -> Registry:
        self._require_running()
        assert self._registry is not None  # set by start(); checked above
        return self._registry

    @property
    def trust(self) -> ControllerTrust:
        self._require_running()
        assert self._trust is not None
        return self._trust

    @property
    def artifacts(self) -> ArtifactStore:
        self._require_running()
        assert self._artifacts is not None
        return self._artifacts

    @property
    def rollouts(self) -> RolloutManager:
        """Staged rollouts: start, pause, resume, abort and inspect them."""
        self._require_running()
        assert self._rollouts is not None
        return self._rollouts

    def start(self) -> None:
        """Open and migrate the database, then start the planner and retention threads."""
        with self._state_lock:
            if self._state is not ControllerState.CREATED:
                raise ControllerStateError(f"cannot start a controller that is {self._state}")
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()
            try:
                self._database = open_database(self.database_url)
            except BaseException:
                self._lock.release()
                raise
            self._registry = Registry(self._database)
            self._artifacts = ArtifactStore(self.data_dir / "artifacts")
            self._trust = ControllerTrust(
                self.data_dir / "trust",
                registry=self._registry,
                certificates=CertificateRegistry(self._database),
                manifest_ttl_s=self.config.manifest_ttl_s,
                certificate_validity=timedelta(days=self.config.certificate_validity_days),
            )
            self._deployer = Deployer(self._registry, self.sessions, self._trust.signer)
            self._planner = Planner(
                self._registry,
                self._artifacts,
                work_dir=self.data_dir / "plans",
                cache_dir=self.data_dir / "compress-cache",
            )
            self._worker = PlannerWorker()
            self._rollouts = RolloutManager(
                self._registry,
                self._database,
                self._deployer,
                choose_variant=self._starting_rung,
                check_interval_s=self.config.rollout_check_interval_s,
            )
            self._ingest = TelemetryIngest(
                self._store_telemetry_batch,
                queue_max=self.config.telemetry_queue_max,
                on_undecodable=self._drop_undecodable,
            )
            self._ingest.start()
            self._state = ControllerState.RUNNING

        # A previous process may have died with devices online and plans running. Other
        # controller processes on the same database keep hearing from their devices, so
        # with a presence timeout only devices unheard for that long are set offline, and
        # the presence check sets the rest offline once they are.
        timeout_s = self.config.presence_timeout_s
        self._registry.mark_devices_offline(
            unseen_since=utc_now() - timedelta(seconds=timeout_s) if timeout_s > 0 else None
        )
        self._resume_interrupted_plans()
        self._rollouts.start_engine()
        self._retention_thread = threading.Thread(
            target=self._retention_loop, name="telemetry-retention", daemon=True
        )
        self._retention_thread.start()
        self._revoked = frozenset(self._trust.certificates.revoked_devices())
        self._revocation_thread = threading.Thread(
            target=self._revocation_loop, name="revocation-check", daemon=True
        )
        self._revocation_thread.start()
        self._redeploy_thread = threading.Thread(
            target=self._redeploy_loop, name="redeploy", daemon=True
        )
        self._redeploy_thread.start()
        if self._presence is not None:
            self._presence_thread = threading.Thread(
                target=self._presence_loop, name="presence-check", daemon=True
            )
            self._presence_thread.start()
        logger.info(
            "controller started: database %s, data in %s", self._database.url, self.data_dir
        )

    def serve_grpc(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: bool = False,
        enroll_port: int = 0,
        server_names: Sequence[str] = (),
    ) -> int:
        """Start the gRPC endpoint and return the bound port (useful with ``port=0``).

        With ``tls`` the fleet port requires mutual TLS, and an enrollment port opens on
        ``enroll_port`` (its bound port is ``self.enroll_port``). ``server_names`` are
        extra names for the controller's certificate when it is first created. Without
        ``tls`` the port is plaintext and unauthenticated, meant for loopback use.
        """
        from edgefleet.controller.grpc_server import create_enrollment_server, create_server

        self._require_running()
        assert self._trust is not None
        if self._grpc_server is not None:
            raise ControllerStateError("the gRPC server is already running")
        credentials = None
        if tls:
            self._trust.enable_tls(tuple(server_names))
            credentials = self._trust.fleet_credentials()
        elif not is_loopback(host):
            logger.warning(
                "SERVING PLAINTEXT gRPC ON %s, A NON-LOOPBACK ADDRESS: any host that reaches "
                "it can register as any device and receive models. Serve with --tls.",
                host,
            )
        self._grpc_server, bound_port = create_server(
            self,
            host=host,
            port=port,
            max_workers=self.config.grpc_max_workers,
            credentials=credentials,
        )
        if tls:
            self._enroll_server, self.enroll_port = create_enrollment_server(
                self, host=host, port=enroll_port, credentials=self._trust.enrollment_credentials()
            )
            self._enroll_server.start()
            logger.info("enrollment server (TLS) listening on %s:%d", host, self.enroll_port)
        self._grpc_server.start()
        logger.info(
            "gRPC server listening on %s:%d (%s)",
            host,
            bound_port,
            "mutual TLS" if tls else "plaintext",
        )
        return bound_port

    # -- trust ----------------------------------------------------------------------

    def create_enrollment_token(self, *, ttl: timedelta, device_id: str | None = None) -> NewToken:
        """Create a one-time enrollment token; devices redeem it on the enrollment port."""
        self.trust.load_pki()
        return self.trust.create_token(ttl=ttl, device_id=device_id)

    def enroll(self, request: fleet_pb2.EnrollRequest) -> fleet_pb2.EnrollResponse:
        """Enroll a device (see ``ControllerTrust.enroll``); re-enrolling lifts a revocation."""
        response = self.trust.enroll(request)
        with self._state_lock:
            self._revoked = self._revoked - {response.device_id}
        return response

    def manage_broker_credentials(self, password_file: Path, acl_file: Path) -> None:
        """Write each enrolled device's Mosquitto password and ACL entries to these files."""
        from edgefleet.controller.mosquitto import MosquittoCredentials

        self.trust.broker_credentials = MosquittoCredentials(password_file, acl_file)

    def revoke_device(self, device_id: str, *, reason: str = "revoked by an operator") -> int:
        """Revoke the device's certificates and broker entries, and end its open session.

        Returns the number of certificates revoked.
        """
        count = self.trust.revoke(device_id, reason=reason)
        self.registry.record_event(
            EventKind.REVOKED,
            device_id=device_id,
            reason=reason,
            details={"certificates": count},
        )
        logger.warning("revoked device %s (%d certificates): %s", device_id, count, reason)
        self._apply_revocations({device_id})
        return count

    def is_revoked(self, device_id: str) -> bool:
        return device_id in self._revoked

    def _require_not_revoked(self, device_id: str) -> None:
        if device_id in self._revoked:
            self.trust.record_denied(device_id, "the device's certificate is revoked")
            raise AuthenticationError(f"device {device_id} is revoked; enroll it again")

    def _apply_revocations(self, device_ids: set[str]) -> None:
        with self._state_lock:
            self._revoked = self._revoked | device_ids
        for device_id in device_ids:
            session = self.sessions.get(device_id)
            if session is not None:
                logger.warning("closing the session of revoked device %s", device_id)
                # Ends a gRPC stream at once; an MQTT session has no stream to end, so
                # forgetting it is what stops commands from reaching the device.
                self.close_session(session)

    def _revocation_loop(self) -> None:
        assert self._trust is not None
        checked_at = utc_now()
        while not self._stop.wait(self.config.revocation_check_interval_s):
            try:
                now = utc_now()
                revoked = self._trust.certificates.revoked_devices(since=checked_at)
                checked_at = now
            except ControllerStateError:
                return
            except Exception:
                logger.exception("checking for revoked certificates failed; retrying later")
                continue
            if revoked - self._revoked:
                self._apply_revocations(revoked)

    def serve_mqtt(self, settings: BrokerSettings, *, group: str = DEFAULT_SHARE_GROUP) -> None:
        """Connect to the broker and serve devices on the MQTT transport.

        Raises ``ControllerStateError`` when already serving MQTT, and ``OSError`` when the
        broker cannot be reached or refuses the connection.
        """
        from edgefleet.controller.mqtt_endpoint import MqttEndpoint

        self._require_running()
        if self._mqtt_endpoint is not None:
            raise ControllerStateError("the MQTT endpoint is already running")
        endpoint = MqttEndpoint(self, settings, group=group)
        endpoint.start()
        self._mqtt_endpoint = endpoint
        logger.info("serving devices through broker %s", settings.address.url)

    def shutdown(self, *, grace_s: float | None = None) -> None:
        """Stop accepting RPCs, end open sessions, let RPCs finish for ``grace_s``, close.

        Safe to call more than once; later calls return at once.
        """
        with self._state_lock:
            if self._state is not ControllerState.RUNNING:
                return
            self._state = ControllerState.STOPPING
        grace = self.config.shutdown_grace_s if grace_s is None else grace_s
        logger.info("controller shutting down (grace period %.1f s)", grace)
        # Only this process's devices go offline at the end; other processes on the same
        # database may serve the rest. Read before the endpoints close their sessions.
        served = self.sessions.connected()

        stopped = None
        if self._enroll_server is not None:
            self._enroll_server.stop(0)
        if self._grpc_server is not None:
            # stop() rejects new RPCs at once; closing the sessions ends the long-lived
            # streams cleanly instead of cancelling them when the grace period runs out.
            stopped = self._grpc_server.stop(grace)
        if self._mqtt_endpoint is not None:
            self._mqtt_endpoint.stop()
        self.sessions.close_all()
        if stopped is not None:
            stopped.wait()
        # After the endpoints: samples they queued are still stored.
        assert self._ingest is not None
        self._ingest.stop(timeout_s=grace + 5)
        stats = self._ingest.stats()
        logger.info(
            "telemetry ingest: %d samples submitted, %d stored in %d batches, %d dropped, "
            "%d submits waited for room; connections: %d admitted, %d over the connect rate",
            stats.submitted,
            stats.stored_samples,
            stats.stored_batches,
            stats.dropped,
            stats.blocked_submits,
            self.connect_limiter.admitted,
            self.connect_limiter.rejected,
        )
        self._stop.set()
        assert self._worker is not None and self._registry is not None
        assert self._rollouts is not None
        self._rollouts.stop_engine(timeout_s=grace + 1)
        if not self._worker.shutdown(timeout_s=grace):
            logger.warning("a plan is still running; it is abandoned and replanned at next start")
        if self._retention_thread is not None:
            self._retention_thread.join(timeout=grace + 1)
        if self._revocation_thread is not None:
            self._revocation_thread.join(timeout=grace + 1)
        if self._redeploy_thread is not None:
            self._redeploy_thread.join(timeout=grace + 1)
        if self._presence_thread is not None:
            self._presence_thread.join(timeout=grace + 1)
        self._registry.mark_devices_offline(served)
        assert self._database is not None
        self._database.close()
        self._lock.release()
        self._state = ControllerState.STOPPED
        logger.info("controller stopped")

    def wait_for_termination(self, timeout_s: float | None = None) -> bool:
        """Block until ``shutdown`` finished or ``timeout_s`` passed; returns whether it did."""
        return self._stop.wait(timeout_s)

    def _require_running(self) -> None:
        if self._state is not ControllerState.RUNNING:
            raise ControllerStateError(f"the controller is {self._state}, not running")

    # -- devices --------------------------------------------------------------------

    def register_device(
        self,
        device_id: str,
        profile: DeviceProfile,
        *,
        calibration: DeviceCalibration | None = None,
        agent_version: str = "",
        onnxruntime_version: str = "",
        current_variant_id: str = "",
    ) -> DeviceRow:
        """Register a device (or refresh it), then plan or deploy for it in the background.

        Raises ``AuthenticationError`` for a revoked device.
        """
        request = RegistrationRequest(
            device_id=device_id,
            profile=profile,
            calibration=calibration,
            agent_version=agent_version,
            onnxruntime_version=onnxruntime_version,
            current_variant_id=current_variant_id,
        )
        result = self.register_devices([request])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def register_devices(
        self, requests: Sequence[RegistrationRequest]
    ) -> list[DeviceRow | AuthenticationError]:
        """Register many devices in one transaction; returns a row or the error per request.

        A revoked device gets an ``AuthenticationError`` in its place, and the others are
        still registered. When the batch transaction fails (a profile inserted by another
        controller process at the same moment, say), each device is registered alone in
        its own transaction, and a failure there raises.
        """
        results: list[DeviceRow | AuthenticationError | None] = [None] * len(requests)
        accepted: list[tuple[int, RegistrationRequest]] = []
        for index, request in enumerate(requests):
            try:
                self._require_not_revoked(request.device_id)
            except AuthenticationError as exc:
                results[index] = exc
                continue
            accepted.append((index, request))

        registrations = [self._registration(request) for _index, request in accepted]
        try:
            devices = self.registry.register_devices(registrations)
        except sa.exc.SQLAlchemyError:
            if len(registrations) == 1:
                raise
            logger.warning(
                "registering %d devices in one transaction failed; registering each alone",
                len(registrations),
                exc_info=True,
            )
            devices = [self.registry.register_devices([one])[0] for one in registrations]

        for (index, request), device in zip(accepted, devices, strict=True):
            results[index] = device
            self._after_registration(request, device)
        return [result for result in results if result is not None]

    def _registration(self, request: RegistrationRequest) -> DeviceRegistration:
        calibration = request.calibration
        scale = None
        if calibration is not None:
            scale = self.host_calibration.latency_scale(calibration)
        profile = request.profile
        return DeviceRegistration(
            device_id=request.device_id,
            profile=profile,
            calibration=calibration.to_dict() if calibration is not None else None,
            agent_version=request.agent_version,
            onnxruntime_version=request.onnxruntime_version,
            current_variant_id=request.current_variant_id or None,
            latency_scale=scale,
            event=EventRow(
                at=utc_now(),
                kind=EventKind.REGISTERED,
                device_id=request.device_id,
                reason=f"registered with profile {profile.name}",
                details={
                    "profile_fingerprint": profile.fingerprint,
                    "agent_version": request.agent_version,
                },
            ),
        )

    def _after_registration(self, request: RegistrationRequest, device: DeviceRow) -> None:
        device_id = request.device_id
        logger.info(
            "registered device %s with profile %s",
            device_id,
            request.profile.name,
            extra={"device_id": device_id},
        )
        calibration = request.calibration
        if (
            calibration is not None
            and self.host_calibration.latency_scale(calibration) is None
            and calibration.reference_sha256 == self.host_calibration.reference_sha256
        ):
            # Measure the host first, on the planner thread, so the plan that follows
            # uses the device's scale and neither disturbs the other's timing. One
            # queued calibration per thread count covers every device registered before
            # it starts, because it scales all devices that have no scale yet.
            threads = calibration.threads
            with self._state_lock:
                queued = threads in self._calibrations_queued
                self._calibrations_queued.add(threads)
            if not queued:
                self._worker_submit(
                    f"host calibration at {threads} threads",
                    lambda: self._calibrate_host(threads),
                )
        self._queue_placement(device_id)

    def set_pinned(self, device_id: str, pinned: bool) -> DeviceRow:
        """Pin a device to its desired variant (the policy leaves it alone), or unpin it."""
        return self.registry.update_device(device_id, pinned=pinned)

    def open_session(self, session: DeviceSession, *, current_variant_id: str = "") -> None:
        """Open the session of a registered device and re-send its unfinished deployment.

        Raises ``UnknownDeviceError`` for a device that has not registered and
        ``AuthenticationError`` for a revoked one.
        """
        error = self.open_sessions([(session, current_variant_id)])[0]
        if error is not None:
            raise error

    def open_sessions(
        self, openings: Sequence[tuple[DeviceSession, str]]
    ) -> list[UnknownDeviceError | AuthenticationError | None]:
        """Open sessions of ``(session, current_variant_id)`` with one database transaction.

        Returns, in order, None for each opened session, or the error that kept it closed:
        ``UnknownDeviceError`` for a device that has not registered, ``AuthenticationError``
        for a revoked one. Each device's unfinished deployment is re-sent.
        """
        errors: list[UnknownDeviceError | AuthenticationError | None] = []
        changes: dict[str, dict[str, Any]] = {}
        events: list[EventRow] = []
        for session, current_variant_id in openings:
            device_id = session.device_id
            try:
                self._require_not_revoked(device_id)
            except AuthenticationError as exc:
                errors.append(exc)
                continue
            errors.append(None)
            now = utc_now()
            changes[device_id] = {
                "state": DeviceState.ONLINE,
                "last_seen": now,
                "current_variant_id": current_variant_id or None,
            }
            events.append(
                EventRow(
                    at=now,
                    kind=EventKind.CONNECTED,
                    device_id=device_id,
                    reason="session opened",
                    to_variant=current_variant_id or None,
                )
            )
        # One transaction, which finds unregistered devices before their sessions open.
        devices = self.registry.update_devices(changes, events=events) if changes else {}

        opened = []
        for index, (session, _variant) in enumerate(openings):
            if errors[index] is not None:
                continue
            device = devices.get(session.device_id)
            if device is None:
                errors[index] = UnknownDeviceError(
                    f"device {session.device_id!r} is not registered"
                )
                continue
            self.sessions.open(session)
            if self._presence is not None:
                self._presence.connected(device.device_id, time.monotonic())
            self._check_takeovers(device.device_id)
            opened.append(device.device_id)
            logger.info(
                "device %s connected over %s, serving %s",
                device.device_id,
                session.transport,
                device.current_variant_id or "nothing",
                extra={"device_id": device.device_id},
            )
        # Read again now that the sessions are open: a deployment stored after the first
        # read found no session to send to, so only this read returns it for a resend.
        for device in self.registry.get_devices(opened).values():
            self._resume_deployment(device)
        return errors

    def repeat_session(self, device_id: str) -> None:
        """Count a session opening that repeats the device's open session, and alert on a burst.

        The open session stays, and no ``connected`` event is recorded.
        """
        self.sessions.count_takeover(device_id)
        self._check_takeovers(device_id)

    def _check_takeovers(self, device_id: str) -> None:
        takeovers = self.sessions.takeover_burst(device_id)
        if not takeovers:
            return
        reason = (
            f"{takeovers} sessions of device {device_id} replaced each other within "
            f"{TAKEOVER_WINDOW_S:g} s: two agents probably run with this device id. Stop the "
            "one that is a copy (a copied state directory or SD card image), enroll it under "
            "its own id, and check the device's desired variant"
        )
        logger.warning("%s", reason, extra={"device_id": device_id})
        self.registry.record_event(
            EventKind.ALERT,
            device_id=device_id,
            reason=reason,
            details={"cause": "duplicate_device_id", "takeovers": takeovers},
        )

    def close_session(self, session: DeviceSession) -> None:
        """Forget a session that ended; the device goes offline unless it reconnected."""
        with self._session_change_lock:
            if not self.sessions.remove(session):
                return
            # A quiet device already has its disconnected event.
            was_quiet = self._presence is not None and self._presence.is_quiet(session.device_id)
            if self._presence is not None:
                self._presence.disconnected(session.device_id)
            try:
                self.registry.update_device(session.device_id, state=DeviceState.OFFLINE)
                if not was_quiet:
                    self.registry.record_event(
                        EventKind.DISCONNECTED, device_id=session.device_id, reason="session ended"
                    )
            except ControllerStateError:
                # Shutting down: shutdown() marks every device offline itself.
                return
        logger.info(
            "device %s disconnected", session.device_id, extra={"device_id": session.device_id}
        )

    def _heard_from(self, device_id: str) -> None:
        if self._presence is not None:
            self._presence.heard(device_id, time.monotonic())

    def check_presence(self) -> PresenceChanges:
        """Show connected devices that sent nothing for ``presence_timeout_s`` offline.

        A device is quiet when neither this process nor the database has heard from it
        within the timeout. The database has the telemetry that other controller processes
        stored. A quiet device that is heard from again is shown online. Sessions stay
        open either way. Returns the devices whose state changed.
        """
        if self._presence is None:
            return PresenceChanges(quiet=[], back=[])
        watch = self._presence
        now = time.monotonic()
        connected = self.sessions.connected()
        unheard = watch.unheard(connected, now=now)
        if unheard:
            wall = utc_now()
            for device in self.registry.get_devices(unheard).values():
                if device.last_seen is not None:
                    age_s = (wall - device.last_seen).total_seconds()
                    watch.heard(device.device_id, now - age_s)
        changes = watch.check(connected, now=now)
        timeout = watch.timeout_s
        quiet = self.registry.set_presence(
            changes.quiet,
            DeviceState.OFFLINE,
            reason=f"nothing heard for {timeout:g} s (presence_timeout_s)",
            unseen_since=utc_now() - timedelta(seconds=timeout),
        )
        for device_id in quiet:
            logger.warning(
                "device %s sent nothing for %g s; shown offline until it is heard from again",
                device_id,
                timeout,
                extra={"device_id": device_id},
            )
        with self._session_change_lock:
            # Under the lock close_session takes, so a session that ends meanwhile is
            # not shown online again.
            back = self.registry.set_presence(
                [d for d in changes.back if self.sessions.is_connected(d)],
                DeviceState.ONLINE,
                reason="heard from again",
            )
        for device_id in back:
            logger.info("device %s is heard from again", device_id, extra={"device_id": device_id})
        # Devices shown online that no controller process has heard from, such as those of
        # a process that died. Devices with a session here are the watch's to judge.
        unseen_since = utc_now() - timedelta(seconds=timeout)
        orphaned = [
            device_id
            for device_id in self.registry.online_devices_unseen_since(unseen_since)
            if not self.sessions.is_connected(device_id)
        ]
        for device_id in self.registry.set_presence(
            orphaned,
            DeviceState.OFFLINE,
            reason=f"no controller process heard from it for {timeout:g} s",
            unseen_since=unseen_since,
        ):
            quiet.append(device_id)
            logger.warning(
                "device %s is shown online but no controller process heard from it for %g s; "
                "shown offline",
                device_id,
                timeout,
                extra={"device_id": device_id},
            )
        return PresenceChanges(quiet=quiet, back=back)

    def _presence_loop(self) -> None:
        assert self._presence is not None
        interval = min(5.0, self._presence.timeout_s / 4)
        while not self._stop.wait(interval):
            try:
                self.check_presence()
            except ControllerStateError:
                return
            except Exception:
                logger.exception("checking device presence failed; retrying later")

    def admit_connection(self, device_id: str) -> None:
        """Take a token of the connect rate; raises ``RateLimitedError`` when none is left.

        Endpoints call it before each registration, which every agent sends first on
        every connection.
        """
        self._require_running()
        if self.connect_limiter.try_acquire():
            return
        rejected = self.connect_limiter.rejected
        if rejected % 100 == 1:
            logger.warning(
                "connect rate of %.0f/s exceeded; rejected device %s (%d rejected in all)",
                self.connect_limiter.rate_per_s,
                device_id,
                rejected,
            )
        raise RateLimitedError(
            f"too many devices are connecting (over {self.connect_limiter.rate_per_s:g} per "
            "second); retry after a backoff"
        )

    def submit_telemetry(
        self,
        device_id: str,
        sample: fleet_pb2.TelemetrySample | bytes,
        on_stored: OnStored | None = None,
    ) -> bool:
        """Queue a sample (or its serialized bytes) for batched storage.

        Blocks while the ingest queue is full; returns False when the sample was dropped
        because the controller is stopping. ``ingest_stats`` counts both. ``on_stored``
        receives the highest seq of its samples once their batch is stored.
        """
        if self._ingest is None:
            raise ControllerStateError(f"the controller is {self._state}, not running")
        self._heard_from(device_id)
        return self._ingest.submit(device_id, sample, on_stored)

    def offer_telemetry(
        self,
        device_id: str,
        sample: fleet_pb2.TelemetrySample | bytes,
        on_stored: OnStored | None = None,
    ) -> bool:
        """Queue a sample without waiting; returns False, counting nothing, when it is full."""
        if self._ingest is None:
            raise ControllerStateError(f"the controller is {self._state}, not running")
        self._heard_from(device_id)
        return self._ingest.offer(device_id, sample, on_stored)

    def ingest_stats(self) -> IngestStats:
        """Return the counters of the batched telemetry ingest, drops included."""
        if self._ingest is None:
            raise ControllerStateError(f"the controller is {self._state}, not running")
        return self._ingest.stats()

    def _drop_undecodable(self, device_id: str, error: Exception) -> None:
        self.telemetry_drops.record(
            device_id, InvalidTelemetryError(f"undecodable sample: {error}", field="payload")
        )

    def ingest_telemetry(
        self, device_id: str, sample: fleet_pb2.TelemetrySample
    ) -> TelemetryRecord | None:
        """Validate, store and act on one sample; returns None when it was dropped."""
        if device_id in self._revoked:
            return None
        try:
            record = validate_sample(sample, device_id=device_id)
        except InvalidTelemetryError as exc:
            self.telemetry_drops.record(device_id, exc)
            return None
        self.registry.add_telemetry(record)
        with self._state_lock:
            self._device_runtime(device_id).samples.append(record)
        self._apply_policy(device_id, now=record.received_at)
        return record

    def ingest_telemetry_batch(
        self, samples: Sequence[tuple[str, fleet_pb2.TelemetrySample]]
    ) -> list[TelemetryRecord]:
        """Validate and store many samples in one transaction, then act on each device once.

        Samples of devices that never registered are dropped like invalid ones. Returns the
        records stored, in input order.
        """
        self._require_running()
        return self._store_telemetry_batch(samples)

    def _store_telemetry_batch(
        self, samples: Sequence[tuple[str, fleet_pb2.TelemetrySample]]
    ) -> list[TelemetryRecord]:
        # Runs on the ingest thread, also while stopping, so that queued samples are kept;
        # the policy acts only while the controller runs.
        registry = self._registry
        assert registry is not None
        records: list[TelemetryRecord] = []
        for device_id, sample in samples:
            if device_id in self._revoked:
                continue
            try:
                records.append(validate_sample(sample, device_id=device_id))
            except InvalidTelemetryError as exc:
                self.telemetry_drops.record(device_id, exc)
        known = registry.existing_device_ids({record.device_id for record in records})
        for record in records:
            if record.device_id not in known:
                self.telemetry_drops.record(
                    record.device_id,
                    InvalidTelemetryError(
                        f"device {record.device_id} is not registered", field="device_id"
                    ),
                )
        records = [record for record in records if record.device_id in known]
        records, duplicates = self._recent_samples.fresh(records)
        for record in duplicates:
            self.telemetry_drops.record(
                record.device_id,
                InvalidTelemetryError(
                    f"sample seq {record.seq} sampled at {record.sampled_at.isoformat()} "
                    "was already stored",
                    field="seq",
                ),
            )
        if not records:
            return []
        registry.add_telemetry_many(records)
        self._recent_samples.remember(records)

        latest: dict[str, datetime] = {}
        with self._state_lock:
            for record in records:
                self._device_runtime(record.device_id).samples.append(record)
                latest[record.device_id] = record.received_at
        if self._state is not ControllerState.RUNNING:
            return records
        model = registry.active_model()
        if model is None:
            return records
        # One query for the devices and one per profile for the ladders, not three per
        # device. Device rows are loaded only here, because parsing their profile JSON
        # is a large part of a batch's cost.
        devices = registry.get_devices(latest)
        ladders: dict[str, list[VariantRow]] = {}
        for device_id, received_at in latest.items():
            device = devices.get(device_id)
            if device is None:
                continue  # deleted since the samples were stored
            fingerprint = device.profile_fingerprint
            if fingerprint not in ladders:
                ladders[fingerprint] = registry.ladder(model.id, fingerprint)
            try:
                self._decide(device, model, ladders[fingerprint], now=received_at)
            except ControllerStateError:
                break  # stopping
            except Exception:
                # The samples are stored; one device's failed action must not skip the rest.
                logger.exception("applying the policy to device %s failed", device_id)
        return records

    def handle_status(self, device_id: str, status: fleet_pb2.DeploymentStatus) -> None:
        """Apply a deployment status report from ``device_id``; a revoked device's is dropped."""
        assert self._deployer is not None
        self._require_running()
        if device_id in self._revoked:
            return
        self._heard_from(device_id)
        # Where a deployment failed decides whether sending it again can help.
        failed_in = None
        if status.state == fleet_pb2.DEPLOYMENT_STATE_FAILED:
            before = self.registry.find_deployment(status.deployment_id)
            failed_in = before.state if before is not None else None
        if self._deployer.handle_status(device_id, status):
            # A finished deployment (whatever its end) starts the cooldown, so the policy
            # judges the new variant on fresh samples only.
            with self._state_lock:
                self._device_runtime(device_id).last_action_at = utc_now()
            self._schedule_redeploy(device_id, status, failed_in=failed_in)
            assert self._rollouts is not None
            self._rollouts.notify()

    def dropped_samples(self, device_id: str | None = None) -> int:
        """Return how many invalid telemetry samples were dropped (for one device or all)."""
        return self.telemetry_drops.count(device_id)

    # -- models, variants and deployments --------------------------------------------

    def register_model(
        self,
        source: str,
        *,
        data_path: str | Path,
        weights_path: str | Path | None = None,
        name: str | None = None,
    ) -> ModelRow:
        """Register a model (``.onnx`` path or ``file.py:factory``) and plan every profile.

        Registering the same files again is a no-op apart from making the model active.
        Raises ``InvalidInputError`` when a file is missing, the model does not load, or
        it does not take the dataset's samples.
        """
        data = Path(data_path)
        weights = Path(weights_path) if weights_path is not None else None
        source_path = Path(source if source.endswith(".onnx") else source.rpartition(":")[0])
        if not source.endswith(".onnx") and ":" not in source:
            raise InvalidInputError(
                f"invalid model spec {source!r}: use an .onnx file or path/to/file.py:factory"
            )
        for label, path in (("model", source_path), ("data", data), ("weights", weights)):
            if path is not None and not path.is_file():
                raise InvalidInputError(f"{label} file not found: {path}")

        try:
            digest = model_digest(source, data_path=data, weights_path=weights)
        except PlanningError as exc:
            raise InvalidInputError(str(exc)) from exc
        check_model_files(source, data_path=data, weights_path=weights)
        model = self.registry.register_model(
            name=name or source_path.stem,
            digest=digest,
            source=str(source),
            data_path=str(data),
            weights_path=str(weights) if weights is not None else None,
        )
        self.registry.record_event(
            EventKind.MODEL_REGISTERED,
            reason=f"model {model.name} ({model.id}) registered from {source}",
            details={"model_id": model.id, "digest": digest},
        )
        logger.info("registered model %s (%s) from %s", model.name, model.id, source)
        for fingerprint in self.registry.profile_fingerprints():
            self._ensure_plan(model.id, fingerprint)
        return model

    def active_model(self) -> ModelRow | None:
        return self.registry.active_model()

    def ladder(self, device_id: str) -> list[VariantRow]:
        """Return the ladder of the device's profile for the active model."""
        device = self.registry.get_device(device_id)
        model = self.registry.active_model()
        if model is None:
            return []
        return self.registry.ladder(model.id, device.profile_fingerprint)

    def deploy(self, device_id: str, variant_id: str, *, reason: str) -> DeploymentRow:
        """Deploy a variant of the active model to a device.

        Raises ``UnknownDeviceError`` or ``UnknownVariantError``, and
        ``ControllerStateError`` when no model is registered. Raises
        ``RolloutConflictError`` while a rollout controls the device, because a manual
        deployment would replace the rollout's and count as its failure.
        """
        assert self._deployer is not None
        device = self.registry.get_device(device_id)
        rollout_id = self.rollouts.rollout_of(device_id)
        if rollout_id is not None:
            raise RolloutConflictError(
                f"device {device_id} belongs to rollout {rollout_id}; wait for it to end, "
                "or abort it first"
            )
        model = self.registry.active_model()
        if model is None:
            raise ControllerStateError("no model is registered; register a model first")
        try:
            return self._deployer.deploy(
                device, model_id=model.id, variant_id=variant_id, reason=reason
            )
        except UnknownVariantError:
            profile_name = device.profile.get("name", device.profile_fingerprint[:12])
            raise UnknownVariantError(
                f"no variant {variant_id!r} of the active model {model.id} for device "
                f"{device_id} (profile {profile_name!r}); only the active model's variants "
                f"can be deployed by hand, and `edgefleet variants {model.id}` lists them"
            ) from None

    def wait_until_idle(self, timeout_s: float | None = None) -> bool:
        """Wait until the planner worker has no queued or running task (plans, placements).

        Returns False when ``timeout_s`` passed first.
        """
        assert self._worker is not None
        self._require_running()
        return self._worker.wait_idle(timeout_s)

    def delete_expired_telemetry(self, *, now: datetime | None = None) -> int:
        """Delete telemetry older than the retention period; returns how many rows."""
        cutoff = (now or utc_now()) - timedelta(seconds=self.config.telemetry_retention_s)
        deleted = self.registry.delete_telemetry_before(cutoff)
        if deleted:
            logger.info("deleted %d telemetry samples received before %s", deleted, cutoff)
        return deleted

    # -- placement and planning (planner thread) --------------------------------------

    def _worker_submit(self, name: str, task: Any) -> None:
        assert self._worker is not None
        self._require_running()
        self._worker.submit(name, task)

    def _calibrate_host(self, threads: int) -> None:
        # Devices that register from here on queue another calibration, which scales
        # any of them that this one's device list misses.
        with self._state_lock:
            self._calibrations_queued.discard(threads)
        self.host_calibration.measure(threads)
        for device in self.registry.list_devices():
            if device.latency_scale is not None or not device.calibration:
                continue
            calibration = DeviceCalibration(**device.calibration)
            scale = self.host_calibration.latency_scale(calibration)
            if scale is not None:
                self.registry.update_device(device.device_id, latency_scale=scale)
                logger.info("device %s latency scale %.3f", device.device_id, scale)

    def _queue_placement(self, device_id: str) -> None:
        """Queue the device for ``_place_devices``, with one planner task for the queue.

        A registration storm then costs one query per batch of devices on the planner
        thread, not two per device, and leaves the GIL to telemetry ingest.
        """
        with self._state_lock:
            first = not self._placements_queued
            self._placements_queued.add(device_id)
        if not first:
            return  # the queued task takes this device too
        try:
            self._worker_submit("placement of registered devices", self._place_devices)
        except ControllerStateError:
            with self._state_lock:
                self._placements_queued.clear()
            raise

    def _place_devices(self) -> None:
        """Plan each queued device's profile if needed, else deploy its starting rung."""
        with self._state_lock:
            device_ids, self._placements_queued = self._placements_queued, set()
        model = self.registry.active_model()
        if model is None:
            return
        planned: dict[str, bool] = {}
        ordered = sorted(device_ids)
        devices = [
            device
            for start in range(0, len(ordered), _PLACEMENT_QUERY_IDS)
            for device in self.registry.get_devices(
                ordered[start : start + _PLACEMENT_QUERY_IDS]
            ).values()
        ]
        for device in devices:
            fingerprint = device.profile_fingerprint
            if fingerprint not in planned:
                planned[fingerprint] = self._ensure_plan(model.id, fingerprint)
            if not planned[fingerprint]:
                continue
            try:
                self._assign_start(device, model.id)
            except ControllerStateError:
                raise
            except Exception:
                # One device's failed deployment must not leave the others unplaced.
                logger.exception(
                    "placing device %s failed",
                    device.device_id,
                    extra={"device_id": device.device_id},
                )

    def _ensure_plan(self, model_id: str, fingerprint: str) -> bool:
        """Queue a plan for (model, profile) unless one exists; returns whether it is DONE."""
        plans = self.registry.list_plans(model_id=model_id, profile_fingerprint=fingerprint)
        if any(plan.state is PlanState.DONE for plan in plans):
            return True
        if any(plan.state in (PlanState.PENDING, PlanState.RUNNING) for plan in plans):
            return False
        if plans:
            # Planning failed before; retrying on every registration would loop. A new
            # model registration, or a restart with --model, plans again.
            return False
        scale = self._profile_latency_scale(fingerprint)
        plan = self.registry.create_plan(model_id, fingerprint, latency_scale=scale)
        self._submit_plan(
            PlanJob(
                plan_id=plan.id,
                model_id=model_id,
                profile_fingerprint=fingerprint,
                latency_scale=scale,
            )
        )
        return False

    def _profile_latency_scale(self, fingerprint: str) -> float:
        # Devices of one profile differ a little (cooling, clock governor); the median of
        # their scales represents the profile. Each device's own scale picks its rung.
        scales = [
            device.latency_scale
            for device in self.registry.list_devices(profile_fingerprint=fingerprint)
            if device.latency_scale is not None
        ]
        return statistics.median(scales) if scales else 1.0

    def _submit_plan(self, job: PlanJob) -> None:
        self._worker_submit(
            f"plan {job.plan_id} of model {job.model_id} for profile "
            f"{job.profile_fingerprint[:12]}",
            lambda: self._run_plan(job),
        )

    def _run_plan(self, job: PlanJob) -> None:
        assert self._planner is not None
        try:
            outcome = self._planner.run(job)
        except PlanningError as exc:
            self._on_plan_failed(job, exc)
            return
        finally:
            with self._state_lock:
                self._recompressing.discard((job.model_id, job.profile_fingerprint))
        self._on_plan_done(outcome)

    def _on_plan_failed(self, job: PlanJob, error: PlanningError) -> None:
        logger.error("plan %d failed: %s", job.plan_id, error)
        self.registry.record_event(
            EventKind.PLAN_FAILED,
            device_id=job.device_id,
            reason=str(error),
            details={"plan_id": job.plan_id, "profile_fingerprint": job.profile_fingerprint},
        )

    def _on_plan_done(self, outcome: PlanOutcome) -> None:
        job = outcome.job
        self.registry.record_event(
            EventKind.PLANNED,
            device_id=job.device_id,
            reason=outcome.reason,
            details={
                "plan_id": job.plan_id,
                "profile_fingerprint": job.profile_fingerprint,
                "ladder": list(outcome.ladder),
                "new_rungs": list(outcome.new_rungs),
            },
        )
        if job.tighter and job.device_id is not None and outcome.new_rungs:
            self._step_down_after_recompression(job, outcome)
        for device in self.registry.list_devices(profile_fingerprint=job.profile_fingerprint):
            self._assign_start(device, job.model_id)

    def _step_down_after_recompression(self, job: PlanJob, outcome: PlanOutcome) -> None:
        assert job.device_id is not None and self._deployer is not None
        device = self.registry.get_device(job.device_id)
        target = outcome.new_rungs[0]
        reason = f"stepped down to recompressed variant {target}"
        self._deployer.deploy(device, model_id=job.model_id, variant_id=target, reason=reason)
        self.registry.record_event(
            EventKind.STEPPED_DOWN,
            device_id=device.device_id,
            reason=reason,
            from_variant=device.current_variant_id,
            to_variant=target,
            details={"plan_id": job.plan_id},
        )
        with self._state_lock:
            self._device_runtime(device.device_id).last_action_at = utc_now()

    def _assign_start(self, device: DeviceRow, model_id: str) -> None:
        """Deploy the device's starting rung unless it already targets a ladder variant."""
        assert self._deployer is not None and self._rollouts is not None
        if device.pinned or self._rollouts.rollout_of(device.device_id):
            return
        ladder = self.registry.ladder(model_id, device.profile_fingerprint)
        if not ladder or device.desired_variant_id in {rung.variant_id for rung in ladder}:
            return
        if self._rollouts.serves_other_model(device, model_id):
            # A rollout moves it, in waves gated on health.
            logger.info(
                "device %s serves variant %s of another model; start a rollout of model %s "
                "to move it",
                device.device_id,
                device.current_variant_id,
                model_id,
            )
            return
        target, reason = self._starting_rung(device, ladder)
        if device.current_variant_id == target.variant_id:
            self.registry.update_device(device.device_id, desired_variant_id=target.variant_id)
            return
        self._deployer.deploy(
            device, model_id=model_id, variant_id=target.variant_id, reason=reason
        )

    def _starting_rung(self, device: DeviceRow, ladder: list[VariantRow]) -> tuple[VariantRow, str]:
        # NOTE: a device without a usable calibration is assumed as fast as the host.
        scale = device.latency_scale if device.latency_scale is not None else 1.0
        budget_ms = float(device.profile["latency_budget_ms"])
        memory_mb = float(device.profile["model_memory_budget_mb"])
        for rung in ladder:
            expected_ms = rung.host_latency_p95_ms * scale
            if expected_ms <= budget_ms and rung.peak_memory_mb <= memory_mb:
                return rung, (
                    f"initial deployment: most accurate rung within budget (expected p95 "
                    f"{expected_ms:.2f} ms <= {budget_ms:g} ms at latency scale {scale:.3f})"
                )
        cheapest = ladder[-1]
        reason = (
            f"no ladder variant meets the {budget_ms:g} ms budget at latency scale "
            f"{scale:.3f}; deploying the cheapest"
        )
        self.registry.record_event(
            EventKind.ALERT,
            device_id=device.device_id,
            reason=reason,
            to_variant=cheapest.variant_id,
        )
        return cheapest, reason

    def _resume_deployment(self, device: DeviceRow) -> None:
        assert self._deployer is not None
        model = self.registry.active_model()
        if model is None:
            return
        self._confirm_served_deployment(device)
        unfinished = (
            device.desired_variant_id is not None
            and device.desired_variant_id != device.current_variant_id
        )
        if unfinished and self._deployer.resend(device, model_id=model.id) is not None:
            return
        if unfinished and self._redeploy_desired(device, model.id):
            return
        self._queue_placement(device.device_id)

    def _redeploy_desired(self, device: DeviceRow, model_id: str) -> bool:
        """Deploy the desired variant again to a device that connected without it.

        An agent whose installed model failed its checks at start serves the previous
        model or nothing, while its last deployment reads ACTIVE. Devices of a rollout
        are left to it. Returns whether a deployment was sent.
        """
        assert self._deployer is not None and device.desired_variant_id is not None
        if self.rollouts.rollout_of(device.device_id) is not None:
            return False
        reason = (
            f"device connected serving {device.current_variant_id or 'no variant'}, not its "
            f"desired variant {device.desired_variant_id}; deploying it again"
        )
        try:
            self._deployer.deploy(
                device, model_id=model_id, variant_id=device.desired_variant_id, reason=reason
            )
        except UnknownVariantError:
            # The desired variant belongs to an older model, so placement picks a rung of
            # the active one.
            return False
        logger.warning(
            "device %s: %s", device.device_id, reason, extra={"device_id": device.device_id}
        )
        return True

    def _confirm_served_deployment(self, device: DeviceRow) -> None:
        """Complete the device's unfinished deployment when the device already serves it.

        An agent reports ACTIVE once and ignores a command it has applied, so a report
        lost with a killed controller process is never sent again. The variant the
        device names on connecting is then the only sign that the deployment finished.
        """
        deployment = self.registry.latest_deployment(device.device_id)
        if deployment is None or deployment.state.is_terminal:
            return
        if device.current_variant_id != deployment.variant_id:
            return
        logger.info(
            "device %s connected serving variant %s of unfinished deployment %s; marking it active",
            device.device_id,
            deployment.variant_id,
            deployment.id,
            extra={"device_id": device.device_id, "deployment_id": deployment.id},
        )
        status = fleet_pb2.DeploymentStatus(
            device_id=device.device_id,
            deployment_id=deployment.id,
            state=fleet_pb2.DEPLOYMENT_STATE_ACTIVE,
            message="the device reconnected serving this variant",
        )
        self.handle_status(device.device_id, status)

    def _resume_interrupted_plans(self) -> None:
        assert self._registry is not None
        interrupted = self._registry.list_plans(states=(PlanState.PENDING, PlanState.RUNNING))
        for plan in interrupted:
            logger.info("resuming plan %d, interrupted by the last shutdown", plan.id)
            self._registry.update_plan(plan.id, state=PlanState.PENDING)
            self._submit_plan(
                PlanJob(
                    plan_id=plan.id,
                    model_id=plan.model_id,
                    profile_fingerprint=plan.profile_fingerprint,
                    latency_scale=plan.latency_scale,
                    tighter=plan.generation > 0,
                )
            )

    # -- policy ---------------------------------------------------------------------

    def _device_runtime(self, device_id: str) -> _DeviceRuntime:
        # Caller holds self._state_lock.
        runtime = self._runtime.get(device_id)
        if runtime is None:
            runtime = _DeviceRuntime(samples=deque(maxlen=self.config.policy.window))
            self._runtime[device_id] = runtime
        return runtime

    def _apply_policy(self, device_id: str, *, now: datetime) -> None:
        device = self.registry.get_device(device_id)
        model = self.registry.active_model()
        if model is None:
            return
        ladder = self.registry.ladder(model.id, device.profile_fingerprint)
        self._decide(device, model, ladder, now=now)

    def _decide(
        self, device: DeviceRow, model: ModelRow, ladder: list[VariantRow], *, now: datetime
    ) -> None:
        device_id = device.device_id
        key = (model.id, device.profile_fingerprint)
        with self._state_lock:
            runtime = self._device_runtime(device_id)
            samples = list(runtime.samples)
            view = DeviceView(
                device_id=device_id,
                latency_budget_ms=float(device.profile["latency_budget_ms"]),
                current_variant_id=device.current_variant_id,
                ladder=tuple(
                    Rung(row.variant_id, row.host_latency_p95_ms, row.peak_memory_mb)
                    for row in ladder
                ),
                last_action_at=runtime.last_action_at,
                deployment_in_flight=device.desired_variant_id is not None
                and device.desired_variant_id != device.current_variant_id,
                recompress_in_flight=key in self._recompressing,
                # A rollout judges the variant it deployed; the policy waits until it ends.
                pinned=device.pinned or self.rollouts.rollout_of(device_id) is not None,
            )
        decision = evaluate(self.config.policy, view, samples, now=now)
        if decision.action is PolicyAction.NONE:
            if decision.alert:
                self._raise_alert(device, decision, now=now)
            return
        self._act(device, model.id, decision, now=now)

    def _raise_alert(self, device: DeviceRow, decision: Decision, *, now: datetime) -> None:
        with self._state_lock:
            runtime = self._device_runtime(device.device_id)
            last = runtime.last_alert_at
            # One alert per cooldown period, not one per sample.
            if last is not None and (now - last).total_seconds() < self.config.policy.cooldown_s:
                return
            runtime.last_alert_at = now
        logger.warning(
            "alert for device %s: %s",
            device.device_id,
            decision.reason,
            extra={"device_id": device.device_id},
        )
        self.registry.record_event(
            EventKind.ALERT,
            device_id=device.device_id,
            reason=decision.reason,
            from_variant=device.current_variant_id,
            details=_evidence(decision),
        )

    def _act(self, device: DeviceRow, model_id: str, decision: Decision, *, now: datetime) -> None:
        assert self._deployer is not None
        with self._state_lock:
            self._device_runtime(device.device_id).last_action_at = now
        kind = _POLICY_EVENT_KINDS[decision.action]
        logger.info(
            "policy %s for device %s: %s",
            decision.action.value,
            device.device_id,
            decision.reason,
            extra={"device_id": device.device_id},
        )
        self.registry.record_event(
            kind,
            device_id=device.device_id,
            reason=decision.reason,
            from_variant=device.current_variant_id,
            to_variant=decision.target_variant_id,
            details=_evidence(decision),
        )
        if decision.action is PolicyAction.RECOMPRESS:
            self._start_recompression(device, model_id)
            return
        assert decision.target_variant_id is not None
        self._deployer.deploy(
            device,
            model_id=model_id,
            variant_id=decision.target_variant_id,
            reason=decision.reason,
        )

    def _start_recompression(self, device: DeviceRow, model_id: str) -> None:
        fingerprint = device.profile_fingerprint
        with self._state_lock:
            if (model_id, fingerprint) in self._recompressing:
                return
            self._recompressing.add((model_id, fingerprint))
        scale = self._profile_latency_scale(fingerprint)
        plan = self.registry.create_plan(model_id, fingerprint, latency_scale=scale)
        self._submit_plan(
            PlanJob(
                plan_id=plan.id,
                model_id=model_id,
                profile_fingerprint=fingerprint,
                latency_scale=scale,
                tighter=True,
                device_id=device.device_id,
            )
        )

    # -- deployments sent again after a failure -------------------------------------

    def _schedule_redeploy(
        self,
        device_id: str,
        status: fleet_pb2.DeploymentStatus,
        *,
        failed_in: DeploymentState | None = None,
    ) -> None:
        """Schedule a FAILED deployment again, with backoff; see ``controller/redeploy.py``.

        ``failed_in`` is the state the deployment was in when it failed. One that failed
        while LOADING did not load, or failed its self-test, on the device: the same file
        fails the same way, so it is not sent again and the controller records an alert.
        """
        if status.state == fleet_pb2.DEPLOYMENT_STATE_ACTIVE:
            self._redeploys.record_success(device_id)
            return
        if status.state != fleet_pb2.DEPLOYMENT_STATE_FAILED:
            return
        deployment = self.registry.find_deployment(status.deployment_id)
        if deployment is None:
            return
        device = self.registry.get_device(device_id)
        if device.pinned or self.rollouts.rollout_of(device_id) is not None:
            return

        if failed_in is DeploymentState.LOADING:
            self._stop_redeploying(
                deployment,
                f"variant {deployment.variant_id} failed while device {device_id} loaded it "
                f"({status.message or 'no reason given'})",
                failed_in=failed_in.value,
            )
            return

        delay_s = self._redeploys.record_failure(device_id, deployment.variant_id)
        if delay_s is not None:
            logger.info(
                "deployment %s of variant %s to device %s failed; sending it again in %.0f s",
                deployment.id,
                deployment.variant_id,
                device_id,
                delay_s,
                extra={"device_id": device_id, "deployment_id": deployment.id},
            )
            return
        self._stop_redeploying(
            deployment,
            f"variant {deployment.variant_id} failed {self._redeploys.max_attempts} "
            "deployments in a row",
        )

    def _stop_redeploying(self, deployment: DeploymentRow, cause: str, **details: str) -> None:
        """Record an alert that ``deployment``'s variant is not sent to its device again."""
        device_id = deployment.device_id
        reason = f"{cause}; not sending it again until an operator or the policy deploys it"
        self.registry.record_event(
            EventKind.ALERT,
            device_id=device_id,
            reason=reason,
            to_variant=deployment.variant_id,
            details={"deployment_id": deployment.id, **details},
        )
        logger.error(
            "device %s: %s",
            device_id,
            reason,
            extra={"device_id": device_id, "deployment_id": deployment.id},
        )

    def _redeploy_loop(self) -> None:
        interval_s = min(1.0, self.config.redeploy_initial_s)
        while not self._stop.wait(interval_s):
            for retry in self._redeploys.take_due():
                try:
                    self._redeploy(retry)
                except Exception:
                    # One device's failure must not stop the retries of the others.
                    logger.exception("sending a deployment to %s again failed", retry.device_id)

    def _redeploy(self, retry: DueRedeploy) -> None:
        """Deploy the failed variant again, unless something changed since it failed."""
        assert self._deployer is not None
        device = self.registry.get_device(retry.device_id)
        latest = self.registry.latest_deployment(retry.device_id)
        model = self.registry.active_model()
        superseded = (
            latest is None
            or latest.state is not DeploymentState.FAILED
            or latest.variant_id != retry.variant_id
        )
        if (
            superseded
            or model is None
            or device.pinned
            or device.current_variant_id == retry.variant_id
            or self.rollouts.rollout_of(retry.device_id) is not None
        ):
            return
        reason = (
            f"attempt {retry.attempt} of {self._redeploys.max_attempts}: deployment "
            f"{latest.id} failed ({latest.reason or 'no reason given'})"
        )
        self._deployer.deploy(device, model_id=model.id, variant_id=retry.variant_id, reason=reason)

    # -- retention ------------------------------------------------------------------

    def _retention_loop(self) -> None:
        while not self._stop.wait(self.config.retention_check_interval_s):
            try:
                self.delete_expired_telemetry()
            except Exception:
                # Retention must keep running through a transient database error.
                logger.exception("deleting expired telemetry failed; retrying later")


def _evidence(decision: Decision) -> dict[str, Any]:
    return {
        "action": decision.action.value,
        "telemetry": [sample.to_dict() for sample in decision.evidence],
    }
