"""The agent process: serve the local model, stay connected to the controller, apply commands.

Threads, and what each one owns:

- the caller of ``Agent.run``: registration, the session stream's responses and reconnects;
- ``telemetry``: queues a sample every interval into the on-disk outbox, online or not;
- ``deploy``: applies deploy commands one at a time, so the session keeps flowing while a
  model downloads and loads;
- the transport's sender drains the outbox into the session: gRPC's request thread, or
  ``mqtt-publish`` for MQTT;
- ``inference-api``: the local HTTP server, which keeps serving through outages.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import platform
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import onnxruntime as ort

import edgefleet
from edgefleet.agent.backoff import Backoff
from edgefleet.agent.calibration import measure_reference
from edgefleet.agent.deploy import Deployer
from edgefleet.agent.download import verify_artifact
from edgefleet.agent.errors import (
    AgentError,
    ArtifactError,
    ControllerUnavailable,
    ModelLoadError,
    RegistrationRejected,
    SelfTestError,
    StorageError,
)
from edgefleet.agent.identity import DeviceIdentity
from edgefleet.agent.latency import LatencyRecorder
from edgefleet.agent.outbox import MAX_BACKLOG_SAMPLES, DiskOutbox, open_disk_outbox
from edgefleet.agent.runtime import ModelRuntime
from edgefleet.agent.server import InferenceServer
from edgefleet.agent.store import AgentStore, write_json_atomic
from edgefleet.agent.telemetry import TelemetrySampler
from edgefleet.agent.transport import (
    ControllerClient,
    ControllerConnection,
    SessionCall,
    TransportKind,
)
from edgefleet.agent.update import UpdateState
from edgefleet.errors import InvalidInputError
from edgefleet.ids import validate_device_id
from edgefleet.profiles import DeviceProfile
from edgefleet.protos.mqtt import BrokerSettings
from edgefleet.protos.v1 import fleet_pb2

__all__ = ["Agent", "AgentConfig"]

logger = logging.getLogger(__name__)

_TARGET = re.compile(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})")
# Telemetry intervals the agent accepts, from the command line or from the controller.
MIN_TELEMETRY_INTERVAL_S = 0.05
MAX_TELEMETRY_INTERVAL_S = 3600.0
# Skew beyond this is logged; telemetry is corrected whatever the skew.
CLOCK_SKEW_WARNING_MS = 2000
# How often blocked loops check whether the session closed or the agent is stopping.
_POLL_S = 0.2


@dataclasses.dataclass(frozen=True, slots=True)
class AgentConfig:
    """Settings of one agent process, validated on creation."""

    controller: str  # host:port of the controller's gRPC endpoint; empty for MQTT
    device_id: str
    profile: DeviceProfile
    state_dir: Path
    api_host: str = "127.0.0.1"
    api_port: int = 0  # 0 picks a free port; agent.json records the bound one
    telemetry_interval_s: float = 1.0  # until the controller sets another
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 10.0
    calibration_duration_s: float = 1.0
    download_timeout_s: float = 900.0
    # Telemetry samples kept while offline, and how fast a backlog is sent after a reconnect.
    backlog_samples: int = MAX_BACKLOG_SAMPLES
    backlog_rate_per_s: float = 50.0
    transport: TransportKind = TransportKind.GRPC
    broker: BrokerSettings | None = None  # required by the MQTT transport
    # Enrolled identity (mutual TLS to the controller); None connects in plaintext.
    identity: DeviceIdentity | None = None

    def __post_init__(self) -> None:
        validate_device_id(self.device_id)
        object.__setattr__(self, "transport", TransportKind(self.transport))
        if self.transport is TransportKind.MQTT:
            if self.broker is None:
                raise InvalidInputError("the MQTT transport needs a broker URL")
        else:
            match = _TARGET.fullmatch(self.controller)
            if match is None or not 0 < int(match.group(2)) < 65536:
                raise InvalidInputError(
                    f"invalid controller address {self.controller!r}: expected HOST:PORT"
                )
        if self.backlog_samples < 1:
            raise InvalidInputError(
                f"backlog_samples must be at least 1, got {self.backlog_samples}"
            )
        if not math.isfinite(self.backlog_rate_per_s) or self.backlog_rate_per_s <= 0:
            raise InvalidInputError(
                f"backlog_rate_per_s must be a positive number, got {self.backlog_rate_per_s}"
            )
        if not 0 <= self.api_port < 65536:
            raise InvalidInputError(f"invalid API port {self.api_port}: expected 0-65535")
        _check_interval(self.telemetry_interval_s, "telemetry interval")
        durations = (
            "reconnect_initial_s",
            "reconnect_max_s",
            "calibration_duration_s",
            "download_timeout_s",
        )
        for name in durations:
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise InvalidInputError(f"{name} must be a positive number of seconds, got {value}")
        object.__setattr__(self, "state_dir", Path(self.state_dir))
        if self.identity is not None and self.identity.device_id != self.device_id:
            raise InvalidInputError(
                f"the state directory is enrolled as device {self.identity.device_id!r}, "
                f"not {self.device_id!r}; use that device id or enroll again"
            )

    @property
    def peer(self) -> str:
        """The controller address or broker URL this agent connects to."""
        if self.transport is TransportKind.MQTT and self.broker is not None:
            return self.broker.address.url
        return self.controller

    def connect(self, serving_variant: Callable[[], str] | None = None) -> ControllerConnection:
        """Return a new, unconnected connection of the configured transport.

        ``serving_variant`` returns the variant the agent serves now. The MQTT transport
        publishes it again in the retained presence whenever it changes.
        """
        if self.transport is TransportKind.MQTT:
            from edgefleet.agent.mqtt import MqttConnection

            assert self.broker is not None  # checked in __post_init__
            return MqttConnection(self.broker, self.device_id, serving_variant=serving_variant)
        return ControllerClient(self.controller, identity=self.identity)


class Agent:
    """One device agent; ``run`` blocks until ``stop`` is called from another thread or a signal."""

    def __init__(self, config: AgentConfig, *, clock: Callable[[], float] = time.time) -> None:
        """Create the agent; ``clock`` returns the device's Unix time (tests set it to 1970)."""
        self.config = config
        self._clock = clock
        self.store = AgentStore(config.state_dir)
        self.store.claim()
        if self.store.read_only:
            logger.error(
                "state directory %s is on a read-only file system (the kernel remounts a "
                "failing SD card read-only): serving the committed model without recording "
                "state, and failing every deployment until the directory is writable and "
                "the agent restarts",
                config.state_dir,
            )
        self.latency = LatencyRecorder()
        self.runtime = ModelRuntime(threads=config.profile.inference_threads, latency=self.latency)
        try:
            self.server = InferenceServer(self.runtime, host=config.api_host, port=config.api_port)
        except OSError as exc:
            self.store.release()
            address = f"{config.api_host}:{config.api_port}"
            raise InvalidInputError(
                f"cannot bind the inference API to {address}: {exc}; the port is taken or "
                "the address is not one of this host's, so choose another --api-port or "
                "--api-host"
            ) from exc
        self.sampler = TelemetrySampler(
            device_id=config.device_id,
            state_dir=config.state_dir,
            latency=self.latency,
            variant_id=lambda: self.runtime.variant_id,
        )
        self.calibration: fleet_pb2.Calibration | None = None
        self.telemetry_interval_s = config.telemetry_interval_s
        self.connected = threading.Event()

        self._stopping = threading.Event()
        if self.store.read_only:
            # NOTE: samples queued while offline are lost if the agent stops, and their
            # seq numbers restart at 1.
            self._outbox = DiskOutbox(Path(":memory:"), max_samples=config.backlog_samples)
        else:
            self._outbox = open_disk_outbox(
                config.state_dir / "outbox.sqlite3", max_samples=config.backlog_samples
            )
        # Whether the controller sends telemetry receipts (SessionAck or MQTT PUBACK).
        self._receipts_seen = False
        # Controller clock minus device clock, from the last registration; None before it.
        self.clock_offset_ms: int | None = None
        self._telemetry_thread = threading.Thread(
            target=self._telemetry_loop, name="telemetry", daemon=True
        )
        self._commands: queue.Queue[fleet_pb2.Command | None] = queue.Queue()
        self._queued_ids: set[str] = set()
        self._lock = threading.Lock()
        self._client: ControllerConnection | None = None
        self._call: SessionCall | None = None
        self._deployer = Deployer(
            device_id=config.device_id,
            store=self.store,
            runtime=self.runtime,
            report=self._queue_status,
            client=lambda: self._client,
            stopping=self._stopping,
            latency_budget_ms=config.profile.latency_budget_ms,
            download_timeout_s=config.download_timeout_s,
            backoff=self._new_backoff,
            clock=clock,
        )
        self._deploy_thread = threading.Thread(target=self._deploy_loop, name="deploy", daemon=True)

    @property
    def api_port(self) -> int:
        return self.server.port

    # -- lifecycle ----------------------------------------------------------------------

    def run(self) -> None:
        """Start serving, then keep a session with the controller until ``stop``."""
        self._start()
        try:
            self._connect_loop()
        finally:
            self._shutdown()

    def stop(self) -> None:
        """Ask ``run`` to return; safe to call from a signal handler or another thread."""
        self._stopping.set()
        call = self._call
        if call is not None:
            call.cancel()

    def _start(self) -> None:
        self._check_profile_matches_host()
        self._restore_model()
        self.server.start()
        if not self.store.read_only:
            write_json_atomic(
                self.store.root / "agent.json",
                {
                    "pid": os.getpid(),
                    "device_id": self.config.device_id,
                    "api_host": self.server.host,
                    "api_port": self.server.port,
                    "controller": self.config.peer,
                    "transport": self.config.transport.value,
                },
            )
        threads = self.config.profile.inference_threads
        self.calibration = measure_reference(threads, duration_s=self.config.calibration_duration_s)
        logger.info(
            "calibration at %d threads: p50 %.3f ms, p95 %.3f ms over %d runs",
            threads,
            self.calibration.latency_p50_ms,
            self.calibration.latency_p95_ms,
            self.calibration.runs,
        )
        self._deploy_thread.start()
        self._telemetry_thread.start()

    def _check_profile_matches_host(self) -> None:
        # Only a warning: simulated fleets run profiles of other boards on one host.
        profile = self.config.profile
        machine = platform.machine()
        if machine != profile.cpu_arch.value:
            logger.warning(
                "profile %s declares cpu_arch %s but this host is %s; check --profile",
                profile.name,
                profile.cpu_arch.value,
                machine,
            )
        pinned = profile.onnxruntime_version
        if pinned and not ort.__version__.startswith(pinned):
            logger.warning(
                "profile %s pins onnxruntime %s but %s is installed",
                profile.name,
                pinned,
                ort.__version__,
            )

    def _shutdown(self) -> None:
        self._commands.put(None)
        self._deploy_thread.join(timeout=30)
        self._telemetry_thread.join(timeout=10)
        self._outbox.close()
        self.server.stop()
        if not self.store.read_only:
            (self.store.root / "agent.json").unlink(missing_ok=True)
        self.store.release()
        logger.info("agent %s stopped", self.config.device_id)

    def _restore_model(self) -> None:
        """Load the current model, or the previous one if the current fails to verify or load.

        Each file is checked against the sha256 that names it first, because a file
        truncated by a power cut may still load. A file that fails the check is deleted,
        so that the controller's next deployment of its variant downloads it again.
        """
        state = self.store.state
        for sha256 in (state.current, state.previous):
            if sha256 is None:
                continue
            path = self.store.model_path(sha256)
            try:
                manifest = self.store.load_manifest(sha256)
            except StorageError as exc:
                if self._restore_without_manifest(sha256, exc):
                    variant = "<variant unknown without its manifest>"
                    if sha256 != state.current:
                        self._report_startup_rollback(state.current, variant)
                    return
                continue
            try:
                verify_artifact(path, sha256=sha256, size_bytes=manifest.size_bytes)
                self.runtime.load(path, manifest)
            except (ArtifactError, StorageError, ModelLoadError, SelfTestError, OSError) as exc:
                # OSError: a read-only state directory keeps a damaged file from deletion.
                logger.error("failed to restore model %s: %s", sha256, exc)
                continue
            if sha256 != state.current:
                self._report_startup_rollback(state.current, manifest.variant_id)
            return
        if state.current is not None:
            logger.error(
                "no installed model passed its checks; serving nothing until the controller "
                "deploys one"
            )

    def _restore_without_manifest(self, sha256: str, manifest_error: StorageError) -> bool:
        """Serve a committed model whose manifest is damaged, if its file still matches.

        The digest comes from the committed state, which names only models whose file
        matched a verified (and, once enrolled, signed) manifest at install time, so a file
        that still has that digest is the verified model. The variant id and the self-test
        were in the manifest: the model serves without them, and the agent reports no
        variant, so the controller deploys the desired variant again, which restores the
        manifest without downloading the model. Returns whether the model now serves.
        """
        path = self.store.model_path(sha256)
        try:
            size_bytes = path.stat().st_size
        except OSError as exc:
            logger.error("failed to restore model %s: %s; %s", sha256, manifest_error, exc)
            return False
        try:
            verify_artifact(path, sha256=sha256, size_bytes=size_bytes)
            self.runtime.load_without_manifest(path, sha256)
        except (ArtifactError, ModelLoadError, OSError) as exc:
            logger.error("failed to restore model %s: %s; %s", sha256, manifest_error, exc)
            return False
        logger.error(
            "%s; the model file still matches its committed sha256, so it serves without "
            "its self-test and variant id until the controller deploys the variant again",
            manifest_error,
        )
        return True

    def _report_startup_rollback(self, failed_sha256: str | None, restored_variant: str) -> None:
        if not self.store.read_only:
            self.store.roll_back()
        logger.warning("rolled back to variant %s after the current model failed", restored_variant)
        self._queue_status(
            fleet_pb2.DeploymentStatus(
                device_id=self.config.device_id,
                state=UpdateState.ROLLED_BACK.to_proto(),
                message=f"model {failed_sha256} failed to load at startup; "
                f"serving the previous variant {restored_variant}",
                reported_at_ms=int(time.time() * 1000),
            )
        )

    # -- connection ---------------------------------------------------------------------

    def _new_backoff(self) -> Backoff:
        return Backoff(initial_s=self.config.reconnect_initial_s, max_s=self.config.reconnect_max_s)

    def _connect_loop(self) -> None:
        backoff = self._new_backoff()
        while not self._stopping.is_set():
            client = self.config.connect(lambda: self.runtime.variant_id)
            try:
                self._register(client)
                backoff.reset()
                self._client = client
                self._run_session(client)
                if not self._stopping.is_set():
                    logger.warning("controller %s ended the session", self.config.peer)
            except ControllerUnavailable as exc:
                logger.warning("controller unavailable: %s", exc)
            except RegistrationRejected as exc:
                # Rejections are retried as well, because the operator may fix the
                # controller's configuration. The device keeps serving its model meanwhile.
                logger.error("controller rejected the agent: %s", exc)
            finally:
                self._client = None
                self.connected.clear()
                client.close()
            if self._stopping.is_set():
                break
            delay = backoff.next_delay()
            logger.info("reconnecting to %s in %.1f s", self.config.peer, delay)
            self._stopping.wait(delay)

    def _register(self, client: ControllerConnection) -> None:
        sent_at = self._clock()
        response = client.register(
            fleet_pb2.RegisterRequest(
                device_id=self.config.device_id,
                profile=self.config.profile.to_proto(),
                calibration=self.calibration,
                agent_version=edgefleet.__version__,
                onnxruntime_version=ort.__version__,
                current_variant_id=self.runtime.variant_id,
            )
        )
        self._measure_clock_skew(response.controller_time_ms, sent_at, self._clock())
        if response.telemetry_interval_s:
            try:
                self._set_telemetry_interval(response.telemetry_interval_s)
            except InvalidInputError as exc:
                logger.warning(
                    "keeping telemetry interval %.3g s: %s", self.telemetry_interval_s, exc
                )
        logger.info(
            "registered %s with %s (profile fingerprint %s)",
            self.config.device_id,
            self.config.peer,
            response.profile_fingerprint,
        )

    def _measure_clock_skew(self, controller_ms: int, sent_at: float, received_at: float) -> None:
        """Compare the device clock with the controller's, assuming a symmetric round trip."""
        if not controller_ms:
            return  # a controller that does not send its time
        offset_ms = int(controller_ms - (sent_at + received_at) * 500)
        if abs(offset_ms) > CLOCK_SKEW_WARNING_MS:
            logger.warning(
                "device clock is off by %.1f s from the controller's; correcting telemetry "
                "timestamps",
                offset_ms / 1000,
            )
        self.clock_offset_ms = offset_ms
        if self.store.read_only:
            return
        try:
            self.store.raise_time_floor(controller_ms)
        except StorageError as exc:
            logger.warning("cannot record the controller time: %s", exc)

    def _device_time_ms(self) -> int:
        """Return the device time in Unix ms, corrected by the last measured skew."""
        return int(self._clock() * 1000) + (self.clock_offset_ms or 0)

    def _run_session(self, client: ControllerConnection) -> None:
        closed = threading.Event()
        call = client.open_session(self._outgoing(closed))
        self._call = call
        if self._stopping.is_set():
            call.cancel()
        self.connected.set()
        try:
            for message in call:
                self._handle(message)
        except ControllerUnavailable:
            if not self._stopping.is_set():
                raise
        finally:
            closed.set()
            call.cancel()
            self._call = None
            self._settle_in_flight()

    def _settle_in_flight(self) -> None:
        """Send again, on the next session, the samples this one sent without a receipt."""
        if self._receipts_seen:
            resent = self._outbox.requeue()
            if resent:
                logger.info("%d telemetry samples had no receipt; sending them again", resent)
        else:
            # A controller that sends no receipts would receive every sample again after
            # each reconnect, so samples count as delivered once sent.
            self._outbox.forget_in_flight()

    def _outgoing(self, closed: threading.Event) -> Iterator[fleet_pb2.AgentMessage]:
        yield fleet_pb2.AgentMessage(
            hello=fleet_pb2.SessionHello(
                device_id=self.config.device_id, current_variant_id=self.runtime.variant_id
            )
        )
        # The backlog of an outage goes out at a bounded rate, so that a fleet reconnecting
        # at once does not flood the controller.
        spacing_s = 1.0 / self.config.backlog_rate_per_s
        next_send = time.monotonic()
        while not closed.is_set():
            wait_s = next_send - time.monotonic()
            if wait_s > 0 and closed.wait(wait_s):
                return
            message = self._outbox.get(_POLL_S, keep_in_flight=self._receipts_seen)
            if message is None:
                continue
            if closed.is_set():
                # The stream closed while this call waited, so the next session sends it.
                self._outbox.put_back(message)
                return
            self._fix_timestamp(message)
            next_send = max(next_send + spacing_s, time.monotonic() - 1.0)
            yield message

    def _fix_timestamp(self, message: fleet_pb2.AgentMessage) -> None:
        # A sample taken before this process measured the skew carries the raw device
        # clock. One that reads earlier than a controller time already seen (a clock reset
        # to 1970, say) is corrected with the skew measured since.
        # NOTE: this assumes the clock did not jump between sampling and sending.
        if not message.HasField("telemetry") or self.clock_offset_ms is None:
            return
        sample = message.telemetry
        if sample.sampled_at_ms < self.store.state.time_floor_ms - CLOCK_SKEW_WARNING_MS:
            sample.sampled_at_ms += self.clock_offset_ms

    def _telemetry_loop(self) -> None:
        while not self._stopping.wait(self.telemetry_interval_s):
            try:
                sample = self.sampler.sample()
            except OSError as exc:
                logger.warning("failed to sample telemetry: %s", exc)
                continue
            sample.seq = self._outbox.next_seq()
            sample.sampled_at_ms = self._device_time_ms()
            sample.dropped_samples = self._outbox.dropped
            self._outbox.put(fleet_pb2.AgentMessage(telemetry=sample))

    # -- commands -----------------------------------------------------------------------

    def _handle(self, message: fleet_pb2.ControllerMessage) -> None:
        kind = message.WhichOneof("body")
        if kind == "ack":
            self._receipts_seen = True
            self._outbox.acknowledge(message.ack.telemetry_seq)
            return
        if kind != "command":
            return
        command = message.command
        with self._lock:
            if command.command_id in self._queued_ids or self.store.is_applied(command.command_id):
                logger.info("ignoring command %s: already applied or queued", command.command_id)
                return
            self._queued_ids.add(command.command_id)
        kind = command.WhichOneof("body")
        if kind == "deploy":
            self._commands.put(command)
            return
        if kind == "set_telemetry_interval":
            self._apply_interval_command(command)
        else:
            logger.warning("ignoring command %s of unknown kind %s", command.command_id, kind)
        self._finish_command(command.command_id)

    def _apply_interval_command(self, command: fleet_pb2.Command) -> None:
        try:
            self._set_telemetry_interval(command.set_telemetry_interval.interval_s)
        except InvalidInputError as exc:
            logger.error("rejected command %s: %s", command.command_id, exc)

    def _set_telemetry_interval(self, interval_s: float) -> None:
        _check_interval(interval_s, "telemetry interval from the controller")
        if interval_s != self.telemetry_interval_s:
            logger.info("telemetry interval set to %.3g s", interval_s)
        self.telemetry_interval_s = interval_s

    def _deploy_loop(self) -> None:
        try:
            self._deployer.resume()
        except AgentError as exc:
            logger.error("cannot resume the interrupted deployment: %s", exc)
        except Exception:
            logger.exception("resuming the interrupted deployment crashed")
        while (command := self._commands.get()) is not None:
            try:
                self._deployer.deploy(command)
            except AgentError as exc:
                # The state file could not be written, for example on a full disk. The
                # deployment is abandoned and the serving model stays.
                logger.error("deployment command %s aborted: %s", command.command_id, exc)
            except Exception:
                # A bug must not end this thread, or no later deployment would ever run.
                logger.exception("deployment command %s crashed", command.command_id)
            with self._lock:
                self._queued_ids.discard(command.command_id)

    def _finish_command(self, command_id: str) -> None:
        try:
            if not self.store.read_only:
                self.store.mark_applied(command_id)
        except StorageError as exc:
            logger.error("cannot record command %s as applied: %s", command_id, exc)
        with self._lock:
            self._queued_ids.discard(command_id)

    def _queue_status(self, status: fleet_pb2.DeploymentStatus) -> None:
        self._outbox.put(fleet_pb2.AgentMessage(status=status))


def _check_interval(value: float, source: str) -> None:
    in_range = MIN_TELEMETRY_INTERVAL_S <= value <= MAX_TELEMETRY_INTERVAL_S
    if not math.isfinite(value) or not in_range:
        raise InvalidInputError(
            f"invalid {source} {value}: expected {MIN_TELEMETRY_INTERVAL_S}-"
            f"{MAX_TELEMETRY_INTERVAL_S} seconds"
        )
