"""The MQTT endpoint: device messages from a broker into ``Controller`` calls, and back.

The topic tree is described in ``edgefleet.protos.mqtt``. The endpoint subscribes to the
devices' register, telemetry, status and artifact-request topics as a member of a shared
subscription group (``$share/<group>/...``), so that several controller processes split
the fleet's messages, and to presence without sharing, so that every process knows which
devices are online and can publish their commands.

Threads, and what each one owns:

- paho's network thread runs the callbacks, which only sort messages into queues. It
  hands telemetry payloads to the controller's batched ingest
  (``edgefleet.controller.ingest``), whose bounded queue blocks it when ingest falls
  behind. That stops reading from the broker's socket instead of dropping samples, and
  the broker holds the backlog;
- ``mqtt-control`` handles registrations, presence and deployment statuses in arrival
  order, so a device's statuses are applied in the order it sent them. It takes what
  is queued at once, up to ``CONTROL_BATCH_MAX`` messages, and stores each run of
  consecutive registrations in one transaction, because a commit per registration
  limited a reconnecting fleet to about a hundred registrations a second;
- ``mqtt-artifacts-<n>`` serve artifact chunk requests.

The controller keeps a persistent session (``mqtt_session_expiry_s``) under a client id
derived from its host name and data directory, so the same controller gets the same
session back after a restart, with the telemetry and statuses the broker queued for it
meanwhile. The cost falls on a group of several processes: one that stops for good keeps
its share of the group's messages until its session expires, and those are lost.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edgefleet.controller.errors import (
    AuthenticationError,
    ControllerError,
    ControllerStateError,
    RateLimitedError,
    UnknownDeviceError,
)
from edgefleet.controller.ratelimit import ThrottledLog
from edgefleet.controller.requests import (
    read_artifact_chunk,
    register_device,
    register_devices,
    status_name,
)
from edgefleet.controller.sessions import DeviceSession
from edgefleet.errors import InvalidInputError
from edgefleet.protos.mqtt import (
    QOS,
    BrokerSettings,
    DeviceTopics,
    TopicKind,
    device_topic_filter,
    parse_device_topic,
    reply_properties,
    shared_filter,
)
from edgefleet.protos.v1 import fleet_pb2

if TYPE_CHECKING:
    from edgefleet.controller.service import Controller

__all__ = ["MqttDeviceSession", "MqttEndpoint", "stable_client_id"]

logger = logging.getLogger(__name__)

ARTIFACT_WORKERS = 4
# Registrations queued for the control thread beyond which new ones are rejected with
# RESOURCE_EXHAUSTED, whatever the connect rate allows.
MAX_PENDING_REGISTRATIONS = 64
# A registration that waited longer is skipped, because the agent stops waiting for its reply
# after 10 s (edgefleet.agent.mqtt.REPLY_TIMEOUT_S).
STALE_REGISTRATION_S = 8.0
# Queued control messages the control thread takes at once; a run of registrations
# among them is stored in one transaction.
CONTROL_BATCH_MAX = 128
CONNECT_TIMEOUT_S = 10.0
# Log one WARNING per this many undecodable or misaddressed messages.
_WARN_EVERY = 100

_SHARED_KINDS = (
    TopicKind.REGISTER,
    TopicKind.TELEMETRY,
    TopicKind.STATUS,
    TopicKind.ARTIFACT_REQUEST,
)

_Publish = Callable[[str, bytes, bool], bool]
# A control message: device id, topic kind, the message, and when it arrived (monotonic).
_ControlItem = tuple[str, TopicKind, paho.MQTTMessage, float]


class MqttDeviceSession(DeviceSession):
    """A device on the MQTT transport: ``send`` publishes to its commands topic.

    A deploy command is also published, retained, to the device's ``desired`` topic, so
    that the desired variant survives the controller and reaches an agent that connects
    while no controller runs. The agent applies each command id once, whichever topic
    brought it.
    """

    transport = "mqtt"

    def __init__(self, device_id: str, publish: _Publish, variant_id: str = "") -> None:
        super().__init__(device_id)
        self._topics = DeviceTopics(device_id)
        self._publish = publish
        # The variant named by the device's last ONLINE presence.
        self.variant_id = variant_id

    def send(self, message: fleet_pb2.ControllerMessage) -> bool:
        if self.closed or message.WhichOneof("body") != "command":
            return False
        payload = message.command.SerializeToString()
        sent = self._publish(self._topics.topic(TopicKind.COMMANDS), payload, False)
        if message.command.WhichOneof("body") == "deploy":
            self._publish(self._topics.topic(TopicKind.DESIRED), payload, True)
        return sent


def stable_client_id(data_dir: Path) -> str:
    """Return the controller's MQTT client id: the same for a host and data directory.

    One controller process runs per data directory (``DataDirLock``), so the id is unique
    among running controllers and stays the same across restarts.
    """
    key = f"{socket.gethostname()}:{data_dir.resolve()}"
    return f"edgefleet-controller-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


class MqttEndpoint:
    """One controller process's connection to the broker; see the module docstring."""

    def __init__(
        self,
        controller: Controller,
        settings: BrokerSettings,
        *,
        group: str,
        client_id: str | None = None,
    ) -> None:
        self._controller = controller
        self._settings = settings
        self._filters = [
            (shared_filter(group, device_topic_filter(kind)), SubscribeOptions(qos=QOS))
            for kind in _SHARED_KINDS
        ] + [(device_topic_filter(TopicKind.PRESENCE), SubscribeOptions(qos=QOS))]
        self.client_id = client_id or stable_client_id(controller.data_dir)
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=paho.MQTTv5
        )
        settings.configure(self._client)
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

        self._subscribed = threading.Event()
        self._connect_error: str | None = None
        self._stopping = threading.Event()
        self._control: queue.Queue[_ControlItem | None] = queue.Queue()
        self._pending_registrations = 0
        self._pending_lock = threading.Lock()
        self.stale_registrations = 0
        self._artifacts = ThreadPoolExecutor(ARTIFACT_WORKERS, thread_name_prefix="mqtt-artifacts")
        self._threads = [
            threading.Thread(target=self._control_loop, name="mqtt-control", daemon=True),
        ]
        self._sessions: dict[str, MqttDeviceSession] = {}
        # Dropped device messages: one line per device and topic kind per minute, keyed
        # (device id, kind). An invalid artifact request gets its error reply only when
        # its line is logged, so that a flood of them does not get one reply per message.
        self._drops = ThrottledLog(logger)
        self._dropped = 0
        self._dropped_lock = threading.Lock()
        self._ignored = 0
        self.telemetry_received = 0

    @property
    def dropped_messages(self) -> int:
        """Status, presence and artifact request messages dropped as invalid."""
        with self._dropped_lock:
            return self._dropped

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Connect and subscribe; raises ``OSError`` when the broker is unreachable or refuses."""
        address = self._settings.address
        for thread in self._threads:
            thread.start()
        expiry_s = self._controller.config.mqtt_session_expiry_s
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = expiry_s
        self._client.connect(
            address.host,
            address.port,
            keepalive=self._settings.keepalive_s,
            clean_start=expiry_s == 0,
            properties=properties,
        )
        self._client.loop_start()
        if not self._subscribed.wait(CONNECT_TIMEOUT_S) or self._connect_error:
            self.stop()
            raise OSError(
                f"cannot serve through broker {address.url}: "
                f"{self._connect_error or f'no CONNACK and SUBACK within {CONNECT_TIMEOUT_S:g} s'}"
            )

    def stop(self) -> None:
        """Disconnect, then finish the queued work; the sessions are closed by the controller."""
        self._stopping.set()
        self._client.disconnect()
        self._client.loop_stop()
        self._control.put(None)
        for thread in self._threads:
            thread.join(timeout=10)
        self._artifacts.shutdown(wait=True, cancel_futures=True)
        logger.info("MQTT endpoint %s stopped", self.client_id)

    # -- paho callbacks (network thread) -----------------------------------------------

    def _on_connect(self, client, _userdata, _flags, reason_code, _properties) -> None:
        if reason_code.is_failure:
            self._connect_error = f"broker refused the connection: {reason_code}"
            logger.error(
                "broker %s refused the connection: %s", self._settings.address.url, reason_code
            )
            self._subscribed.set()
            return
        # Subscribed again on every connect: the clean session forgets subscriptions.
        client.subscribe(self._filters)
        logger.info("connected to broker %s as %s", self._settings.address.url, self.client_id)

    def _on_subscribe(self, _client, _userdata, _mid, reason_codes, _properties) -> None:
        refused = [
            topic
            for (topic, _options), code in zip(self._filters, reason_codes, strict=False)
            if code.is_failure
        ]
        if refused:
            self._connect_error = f"broker rejected the subscriptions {', '.join(refused)}"
            logger.error("broker rejected the subscriptions %s; check the ACL", ", ".join(refused))
        self._subscribed.set()

    def _on_disconnect(self, _client, _userdata, _flags, reason_code, _properties) -> None:
        if not self._stopping.is_set():
            logger.warning(
                "lost the broker %s (%s); reconnecting", self._settings.address.url, reason_code
            )

    def _on_message(self, _client, _userdata, message: paho.MQTTMessage) -> None:
        try:
            device_id, kind = parse_device_topic(message.topic)
        except InvalidInputError as exc:
            self._ignore(f"message on {message.topic!r}: {exc}")
            return
        if kind is TopicKind.TELEMETRY:
            # Blocks when ingest falls behind: see the module docstring.
            self.telemetry_received += 1
            with contextlib.suppress(ControllerStateError):
                self._controller.submit_telemetry(device_id, message.payload)
        elif kind is TopicKind.ARTIFACT_REQUEST:
            # RuntimeError: stopping, so the executor no longer accepts work.
            with contextlib.suppress(RuntimeError):
                self._artifacts.submit(self._serve_chunk, device_id, message)
        elif kind is TopicKind.REGISTER:
            self._admit_registration(device_id, message)
        elif kind in (TopicKind.STATUS, TopicKind.PRESENCE):
            self._control.put((device_id, kind, message, time.monotonic()))

    def _admit_registration(self, device_id: str, message: paho.MQTTMessage) -> None:
        # Admitted on arrival, so that a reconnect storm is turned away at once instead of
        # queueing behind the registrations being stored. The pending cap sheds load when
        # storing is slower than the configured rate (a busy host).
        with self._pending_lock:
            backlog = self._pending_registrations >= MAX_PENDING_REGISTRATIONS
        try:
            if backlog:
                raise RateLimitedError(
                    f"{MAX_PENDING_REGISTRATIONS} registrations are waiting; retry after a backoff"
                )
            self._controller.admit_connection(device_id)
        except (RateLimitedError, ControllerStateError) as exc:
            reply_topic = DeviceTopics(device_id).topic(TopicKind.REGISTER_REPLY)
            self._reply(reply_topic, message, error=exc)
            return
        with self._pending_lock:
            self._pending_registrations += 1
        self._control.put((device_id, TopicKind.REGISTER, message, time.monotonic()))

    def _ignore(self, what: str) -> None:
        self._ignored += 1
        if self._ignored % _WARN_EVERY == 1:
            logger.warning("ignoring %s (%d ignored in all)", what, self._ignored)

    # -- publishing -----------------------------------------------------------------

    def publish(
        self, topic: str, payload: bytes, retain: bool, properties: Properties | None = None
    ) -> bool:
        """Publish at QoS 1; returns False when paho could not queue the message."""
        info = self._client.publish(topic, payload, qos=QOS, retain=retain, properties=properties)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            logger.warning("publishing to %s failed: %s", topic, paho.error_string(info.rc))
            return False
        return True

    def _reply(
        self,
        topic: str,
        request: paho.MQTTMessage,
        payload: bytes = b"",
        *,
        error: Exception | None = None,
    ) -> None:
        correlation = getattr(getattr(request, "properties", None), "CorrelationData", None)
        if error is None:
            properties = reply_properties(correlation)
        else:
            properties = reply_properties(
                correlation, status=status_name(error), message=str(error)
            )
        self.publish(topic, payload, False, properties)

    # -- registration, presence and status (mqtt-control thread) ----------------------

    def _control_loop(self) -> None:
        while (item := self._control.get()) is not None:
            batch = [item]
            stopping = False
            while len(batch) < CONTROL_BATCH_MAX:
                try:
                    queued = self._control.get_nowait()
                except queue.Empty:
                    break
                if queued is None:
                    stopping = True
                    break
                batch.append(queued)
            if not self._handle_control_batch(batch) or stopping:
                return

    def _handle_control_batch(self, batch: list[_ControlItem]) -> bool:
        """Handle queued control messages; returns False once the controller stops.

        Registrations and ONLINE presences are held back and handled in two batches, one
        transaction each. Messages of different devices may be reordered, but not those
        of one device: a message of a device that already has one held back first
        handles what is held back.
        """
        registrations: list[tuple[str, paho.MQTTMessage]] = []
        onlines: list[tuple[str, fleet_pb2.Presence]] = []
        held_devices: set[str] = set()

        def flush() -> None:
            self._register_batch(registrations)
            self._open_sessions(onlines)
            registrations.clear()
            onlines.clear()
            held_devices.clear()

        try:
            for device_id, kind, message, arrived in batch:
                if device_id in held_devices:
                    flush()
                if kind is TopicKind.REGISTER:
                    with self._pending_lock:
                        self._pending_registrations -= 1
                    if time.monotonic() - arrived > STALE_REGISTRATION_S:
                        # Its agent stopped waiting for the reply and has retried, or will.
                        self.stale_registrations += 1
                        continue
                    registrations.append((device_id, message))
                    held_devices.add(device_id)
                    continue
                try:
                    if kind is TopicKind.PRESENCE:
                        presence = self._parse_presence(device_id, message.payload)
                        if presence is None or self._is_repeated_online(device_id, presence):
                            continue
                        if presence.state == fleet_pb2.PRESENCE_STATE_ONLINE:
                            onlines.append((device_id, presence))
                            held_devices.add(device_id)
                        else:
                            self._presence(device_id, presence)
                    else:
                        self._status(device_id, message.payload)
                except ControllerStateError:
                    raise
                except Exception:
                    # One bad message must not stop the handling of every other device.
                    logger.exception("handling %s from device %s failed", kind.value, device_id)
            flush()
        except ControllerStateError:
            return False
        return True

    def _open_sessions(self, onlines: list[tuple[str, fleet_pb2.Presence]]) -> None:
        if not onlines:
            return
        sessions = [
            (
                MqttDeviceSession(device_id, self.publish, presence.current_variant_id),
                presence.current_variant_id,
            )
            for device_id, presence in onlines
        ]
        try:
            errors = self._controller.open_sessions(sessions)
        except ControllerStateError:
            raise
        except Exception:
            logger.exception(
                "opening %d sessions together failed; opening each alone", len(sessions)
            )
            for device_id, presence in onlines:
                try:
                    self._presence(device_id, presence)
                except ControllerStateError:
                    raise
                except Exception:
                    logger.exception("opening the session of device %s failed", device_id)
            return
        for (session, _variant), error in zip(sessions, errors, strict=True):
            self._session_opened(session, error)

    def _register_batch(self, registrations: list[tuple[str, paho.MQTTMessage]]) -> None:
        """Store registrations in one transaction and reply to each."""
        if len(registrations) <= 1:
            for device_id, message in registrations:
                self._register(device_id, message)
            return
        requests: list[tuple[str, paho.MQTTMessage, fleet_pb2.RegisterRequest]] = []
        for device_id, message in registrations:
            reply_topic = DeviceTopics(device_id).topic(TopicKind.REGISTER_REPLY)
            try:
                request = _parse_registration(device_id, message.payload)
            except InvalidInputError as exc:
                logger.info("rejected the registration of device %s: %s", device_id, exc)
                self._reply(reply_topic, message, error=exc)
                continue
            requests.append((device_id, message, request))
        try:
            results = register_devices(
                self._controller, [request for _device_id, _message, request in requests]
            )
        except ControllerStateError:
            raise
        except Exception:
            logger.exception(
                "storing %d registrations together failed; storing each alone", len(requests)
            )
            for device_id, message, _request in requests:
                self._register(device_id, message)
            return
        for (device_id, message, _request), result in zip(requests, results, strict=True):
            reply_topic = DeviceTopics(device_id).topic(TopicKind.REGISTER_REPLY)
            if isinstance(result, Exception):
                logger.info("rejected the registration of device %s: %s", device_id, result)
                self._reply(reply_topic, message, error=result)
            else:
                self._reply(reply_topic, message, result.SerializeToString())

    def _register(self, device_id: str, message: paho.MQTTMessage) -> None:
        reply_topic = DeviceTopics(device_id).topic(TopicKind.REGISTER_REPLY)
        try:
            request = _parse_registration(device_id, message.payload)
            response = register_device(self._controller, request)
        except (ControllerError, InvalidInputError) as exc:
            logger.info("rejected the registration of device %s: %s", device_id, exc)
            self._reply(reply_topic, message, error=_as_invalid(exc))
            return
        self._reply(reply_topic, message, response.SerializeToString())

    def _presence(self, device_id: str, presence: fleet_pb2.Presence) -> None:
        if presence.state == fleet_pb2.PRESENCE_STATE_ONLINE:
            session = MqttDeviceSession(device_id, self.publish, presence.current_variant_id)
            error: Exception | None = None
            try:
                self._controller.open_session(
                    session, current_variant_id=presence.current_variant_id
                )
            except (UnknownDeviceError, AuthenticationError) as exc:
                error = exc
            self._session_opened(session, error)
        elif presence.state == fleet_pb2.PRESENCE_STATE_OFFLINE:
            previous = self._sessions.pop(device_id, None)
            if previous is not None:
                self._controller.close_session(previous)

    def _session_opened(self, session: MqttDeviceSession, error: Exception | None) -> None:
        device_id = session.device_id
        if isinstance(error, UnknownDeviceError):
            logger.warning("device %s is online but not registered; ignoring it", device_id)
        elif error is not None:
            logger.warning("device %s is online but rejected: %s", device_id, error)
        else:
            self._sessions[device_id] = session

    def _status(self, device_id: str, payload: bytes) -> None:
        try:
            status = fleet_pb2.DeploymentStatus.FromString(payload)
        except Exception as exc:  # protobuf's DecodeError
            self._drop(device_id, TopicKind.STATUS, f"undecodable status: {exc}")
            return
        self._controller.handle_status(device_id, status)

    def _parse_presence(self, device_id: str, payload: bytes) -> fleet_pb2.Presence | None:
        """Parse a presence message; None for a cleared retained presence or a dropped one."""
        if not payload:
            return None
        try:
            presence = fleet_pb2.Presence.FromString(payload)
        except Exception as exc:  # protobuf's DecodeError
            self._drop(device_id, TopicKind.PRESENCE, f"undecodable presence: {exc}")
            return None
        if presence.device_id != device_id:
            # Another message type can decode as a Presence, so the device id is the check
            # that the payload is one.
            self._drop(
                device_id,
                TopicKind.PRESENCE,
                f"presence names device {presence.device_id[:80]!r}, not the topic's",
            )
            return None
        if presence.state not in (
            fleet_pb2.PRESENCE_STATE_ONLINE,
            fleet_pb2.PRESENCE_STATE_OFFLINE,
        ):
            self._drop(
                device_id, TopicKind.PRESENCE, f"presence has invalid state {presence.state}"
            )
            return None
        return presence

    def _is_repeated_online(self, device_id: str, presence: fleet_pb2.Presence) -> bool:
        """Return whether an ONLINE presence belongs to the device's open session.

        The agent publishes its retained presence again when its variant changes, after
        the status that changed it, so the controller already has that variant: the
        session takes it, with no new session and no ``connected`` event. A presence that
        repeats the session's variant comes from a second agent with this device id, a
        reconnect before the will, or a flood. It counts as a takeover, so that a burst
        of them raises the duplicate device id alert, and adds no event either.
        """
        if presence.state != fleet_pb2.PRESENCE_STATE_ONLINE:
            return False
        session = self._sessions.get(device_id)
        if session is None or session.closed:
            return False
        if self._controller.sessions.get(device_id) is not session:
            return False
        variant_id = presence.current_variant_id
        if variant_id == session.variant_id:
            self._controller.repeat_session(device_id)
            return True
        device = self._controller.registry.find_device(device_id)
        if device is None or (device.current_variant_id or "") != variant_id:
            return False
        session.variant_id = variant_id
        return True

    def _drop(self, device_id: str, kind: TopicKind, reason: str) -> bool:
        """Count a dropped device message and log it, rate-limited; returns whether it logged."""
        with self._dropped_lock:
            self._dropped += 1
        return self._drops.log(
            (device_id, kind),
            "dropped a message on the %s topic of device %s: %s",
            kind.value,
            device_id,
            reason,
            extra={"device_id": device_id},
        )

    # -- artifacts (mqtt-artifacts threads) ---------------------------------------------

    def _serve_chunk(self, device_id: str, message: paho.MQTTMessage) -> None:
        reply_topic = DeviceTopics(device_id).topic(TopicKind.ARTIFACT_CHUNKS)
        try:
            request = fleet_pb2.ArtifactRequest.FromString(message.payload)
        except Exception as exc:  # protobuf's DecodeError
            error = InvalidInputError(f"undecodable request: {exc}")
            if self._drop(device_id, TopicKind.ARTIFACT_REQUEST, str(error)):
                self._reply(reply_topic, message, error=error)
            return
        if request.device_id != device_id:
            error = InvalidInputError(
                f"device id {request.device_id[:80]!r} does not match the topic's {device_id!r}"
            )
            if self._drop(device_id, TopicKind.ARTIFACT_REQUEST, str(error)):
                self._reply(reply_topic, message, error=error)
            return
        try:
            chunk = read_artifact_chunk(self._controller, request)
        except (ControllerError, InvalidInputError) as exc:
            self._reply(reply_topic, message, error=exc)
            return
        except Exception as exc:
            logger.exception("serving an artifact chunk to device %s failed", device_id)
            self._reply(reply_topic, message, error=exc)
            return
        self._reply(reply_topic, message, chunk.SerializeToString())


def _parse_registration(device_id: str, payload: bytes) -> fleet_pb2.RegisterRequest:
    try:
        request = fleet_pb2.RegisterRequest.FromString(payload)
    except Exception as exc:  # protobuf's DecodeError
        raise InvalidInputError(f"undecodable request: {exc}") from None
    if request.device_id != device_id:
        # The broker's ACL ties a device's credentials to its topics, so the topic, not
        # the payload, names the device.
        raise InvalidInputError(
            f"device id {request.device_id!r} does not match the topic's {device_id!r}"
        )
    return request


def _as_invalid(error: Exception) -> Exception:
    # A registration fails either on its input or because the controller is stopping.
    if isinstance(error, ControllerStateError | InvalidInputError | AuthenticationError):
        return error
    return InvalidInputError(str(error))
