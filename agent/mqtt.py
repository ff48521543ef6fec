"""MQTT implementation of ``ControllerConnection``: the agent's session through a broker.

One ``MqttConnection`` is one MQTT 5 connection with client id = device id, a persistent
session (``clean_start=False`` with a session expiry), so QoS 1 commands published while
the device is offline wait in the broker, and a retained OFFLINE ``Presence`` as its will.
The topic tree is described in ``edgefleet.protos.mqtt``.

Threads: paho's network thread runs the callbacks, which only decode messages and hand
them to queues. The daemon's thread iterates the session, the session's ``mqtt-publish``
thread drains the outgoing messages, and the deploy thread fetches artifacts.
paho's own reconnect is off, because the daemon opens a new connection per attempt
with its jittered backoff and registers again before each session.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from edgefleet.agent.errors import ControllerUnavailable, RegistrationRejected
from edgefleet.agent.mqtt_artifacts import ChunkFetcher
from edgefleet.protos.mqtt import (
    QOS,
    BrokerSettings,
    DeviceTopics,
    TopicKind,
    reply_error,
    request_properties,
)
from edgefleet.protos.v1 import fleet_pb2

__all__ = ["MqttConnection"]

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
REPLY_TIMEOUT_S = 10.0
# How long close() waits for the OFFLINE presence to reach the broker.
_CLOSE_FLUSH_S = 2.0
# How often a wait for a PUBACK checks whether the session ended.
_PUBACK_POLL_S = 0.5
# Reply statuses that name a problem with the request itself; retrying cannot help soon.
_REJECTED_STATUSES = frozenset(
    {"INVALID_ARGUMENT", "FAILED_PRECONDITION", "PERMISSION_DENIED", "UNAUTHENTICATED"}
)
# CONNACK reason codes that mean the broker rejected these credentials.
_AUTH_FAILURES = frozenset({134, 135})  # bad user name or password, not authorized

_DOWN_TOPICS = (
    TopicKind.COMMANDS,
    TopicKind.DESIRED,
    TopicKind.REGISTER_REPLY,
    TopicKind.ARTIFACT_CHUNKS,
)
_UP_TOPICS = {"telemetry": TopicKind.TELEMETRY, "status": TopicKind.STATUS}


class MqttConnection:
    """One connection to the broker on behalf of device ``device_id``."""

    def __init__(
        self,
        settings: BrokerSettings,
        device_id: str,
        *,
        serving_variant: Callable[[], str] | None = None,
    ) -> None:
        self._settings = settings
        # The retained ONLINE presence names the variant served. A controller that starts
        # later reads it as the device's current variant, so it is published again after
        # each message when the variant changed (an activation or a rollback).
        self._serving_variant = serving_variant
        self._presence_variant: str | None = None
        self._device_id = device_id
        self._topics = DeviceTopics(device_id)
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=device_id,
            protocol=paho.MQTTv5,
            reconnect_on_failure=False,
        )
        settings.configure(self._client)
        offline = fleet_pb2.Presence(device_id=device_id, state=fleet_pb2.PRESENCE_STATE_OFFLINE)
        self._client.will_set(
            self._topics.topic(TopicKind.PRESENCE),
            offline.SerializeToString(),
            qos=QOS,
            retain=True,
        )
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

        self._connack: ReasonCode | None = None
        self._connack_ready = threading.Event()
        self._suback: list[ReasonCode] | None = None
        self._suback_ready = threading.Event()
        self._lost = threading.Event()
        self._lost_reason = ""
        self._replies: queue.Queue[tuple[bytes, Properties | None, bytes]] = queue.Queue()
        # Commands from the commands and desired topics; retained and queued ones can
        # arrive before the session opens, so the queue belongs to the connection.
        self._commands: queue.Queue[fleet_pb2.Command | None] = queue.Queue()
        self._session: _MqttSession | None = None
        self._fetcher = ChunkFetcher(
            publish_request=self._publish_chunk_request,
            connection_lost=self._lost,
            lost_message=self.lost_message,
        )
        self._started = False

    @property
    def peer(self) -> str:
        return self._settings.address.url

    def lost_message(self) -> str:
        return f"connection to broker {self.peer} lost: {self._lost_reason or 'unknown reason'}"

    # -- connection --------------------------------------------------------------------

    def connect(self) -> None:
        """Connect, subscribe to the device's down topics and wait for both to finish."""
        address = self._settings.address
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = self._settings.session_expiry_s
        try:
            self._client.connect(
                address.host,
                address.port,
                keepalive=self._settings.keepalive_s,
                clean_start=False,
                properties=properties,
            )
        except OSError as exc:  # refused, unreachable, TLS handshake failed
            raise ControllerUnavailable(f"cannot connect to broker {self.peer}: {exc}") from exc
        self._client.loop_start()
        self._started = True

        if not self._connack_ready.wait(CONNECT_TIMEOUT_S):
            raise ControllerUnavailable(
                f"broker {self.peer} did not respond to CONNECT within {CONNECT_TIMEOUT_S:g} s"
            )
        reason = self._connack
        if reason is None:
            raise ControllerUnavailable(self.lost_message())
        if reason.is_failure:
            message = f"broker {self.peer} refused the connection of {self._device_id}: {reason}"
            if reason.value in _AUTH_FAILURES:
                raise RegistrationRejected(f"{message}; check the user name and password")
            raise ControllerUnavailable(message)
        self._subscribe()

    def _subscribe(self) -> None:
        options = SubscribeOptions(qos=QOS)
        topics = [(self._topics.topic(kind), options) for kind in _DOWN_TOPICS]
        result, _mid = self._client.subscribe(topics)
        if result != paho.MQTT_ERR_SUCCESS or not self._suback_ready.wait(CONNECT_TIMEOUT_S):
            raise ControllerUnavailable(f"subscribing at broker {self.peer} failed or timed out")
        refused = [
            topic
            for (topic, _options), code in zip(topics, self._suback or [], strict=False)
            if code.is_failure
        ]
        if refused:
            raise RegistrationRejected(
                f"broker {self.peer} rejected the subscriptions {', '.join(refused)} of "
                f"{self._device_id}; check the broker's ACL"
            )

    def close(self) -> None:
        """Publish OFFLINE presence, disconnect cleanly and stop the network thread."""
        if not self._started:
            return
        if not self._lost.is_set():
            # A clean DISCONNECT discards the will, so the presence is published here.
            offline = fleet_pb2.Presence(
                device_id=self._device_id, state=fleet_pb2.PRESENCE_STATE_OFFLINE
            )
            info = self._client.publish(
                self._topics.topic(TopicKind.PRESENCE),
                offline.SerializeToString(),
                qos=QOS,
                retain=True,
            )
            try:
                info.wait_for_publish(_CLOSE_FLUSH_S)
            except (RuntimeError, ValueError) as exc:
                logger.debug("OFFLINE presence of %s not confirmed: %s", self._device_id, exc)
            self._client.disconnect()
        self._client.loop_stop()
        self._started = False

    # -- requests ----------------------------------------------------------------------

    def register(self, request: fleet_pb2.RegisterRequest) -> fleet_pb2.RegisterResponse:
        """Connect, then send the registration and wait for the controller's reply."""
        self.connect()
        correlation = os.urandom(8)
        self._publish(
            TopicKind.REGISTER,
            request.SerializeToString(),
            properties=request_properties(correlation),
        )
        payload = self._wait_reply(correlation)
        try:
            return fleet_pb2.RegisterResponse.FromString(payload)
        except Exception as exc:  # protobuf raises DecodeError, a bare Exception subclass
            raise ControllerUnavailable(f"invalid registration reply: {exc}") from exc

    def _wait_reply(self, correlation: bytes) -> bytes:
        while True:
            try:
                received, properties, payload = self._replies.get(timeout=REPLY_TIMEOUT_S)
            except queue.Empty:
                raise ControllerUnavailable(
                    f"no registration reply within {REPLY_TIMEOUT_S:g} s through broker "
                    f"{self.peer}; is a controller subscribed?"
                ) from None
            if not received:
                raise ControllerUnavailable(self.lost_message())
            if received != correlation:
                continue  # a late reply to an earlier attempt
            error = reply_error(properties)
            if error is None:
                return payload
            status, message = error
            text = f"registration of {self._device_id} failed: {status}: {message}"
            if status in _REJECTED_STATUSES:
                raise RegistrationRejected(text)
            raise ControllerUnavailable(text)

    def open_session(self, outgoing: Iterable[fleet_pb2.AgentMessage]) -> _MqttSession:
        """Publish ``outgoing`` (hello becomes the ONLINE presence) and yield commands."""
        session = _MqttSession(self, self._commands)
        self._session = session
        if self._lost.is_set():
            session.end(lost=True)
        session.start(outgoing)
        return session

    def fetch_artifact(
        self,
        part_path: Path,
        *,
        device_id: str,
        sha256: str,
        size_bytes: int,
        timeout_s: float | None = None,
    ) -> Path:
        """Download in checksummed chunks requested over the broker; resumes from the part file."""
        return self._fetcher.fetch(
            part_path,
            device_id=device_id,
            sha256=sha256,
            size_bytes=size_bytes,
            timeout_s=timeout_s,
        )

    # -- publishing --------------------------------------------------------------------

    def _publish(
        self,
        kind: TopicKind,
        payload: bytes,
        *,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> paho.MQTTMessageInfo:
        if self._lost.is_set():
            raise ControllerUnavailable(self.lost_message())
        info = self._client.publish(
            self._topics.topic(kind), payload, qos=QOS, retain=retain, properties=properties
        )
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise ControllerUnavailable(
                f"publishing to broker {self.peer} failed: {paho.error_string(info.rc)}"
            )
        return info

    def _publish_chunk_request(self, request: fleet_pb2.ArtifactRequest) -> None:
        self._publish(TopicKind.ARTIFACT_REQUEST, request.SerializeToString())

    def publish_agent_message(self, message: fleet_pb2.AgentMessage) -> paho.MQTTMessageInfo | None:
        """Publish one session message on its topic; raises ``ControllerUnavailable``.

        Returns the publish's ``MQTTMessageInfo``, or ``None`` for a message not sent.
        """
        kind = message.WhichOneof("body")
        if kind == "hello":
            return self._publish_online(message.hello.current_variant_id)
        topic = _UP_TOPICS.get(kind or "")
        if topic is None:
            logger.warning("not sending a session message of unknown kind %s", kind)
            return None
        info = self._publish(topic, getattr(message, kind).SerializeToString())
        if self._serving_variant is not None and self._presence_variant is not None:
            # After the status, so that the controller applies the deployment's end first.
            variant_id = self._serving_variant()
            if variant_id != self._presence_variant:
                self._publish_online(variant_id)
        return info

    def _publish_online(self, variant_id: str) -> paho.MQTTMessageInfo:
        online = fleet_pb2.Presence(
            device_id=self._device_id,
            state=fleet_pb2.PRESENCE_STATE_ONLINE,
            current_variant_id=variant_id,
        )
        info = self._publish(TopicKind.PRESENCE, online.SerializeToString(), retain=True)
        self._presence_variant = variant_id
        return info

    # -- paho callbacks (network thread) -------------------------------------------------

    def _on_connect(self, _client, _userdata, _flags, reason_code, _properties) -> None:
        self._connack = reason_code
        self._connack_ready.set()

    def _on_subscribe(self, _client, _userdata, _mid, reason_codes, _properties) -> None:
        self._suback = list(reason_codes)
        self._suback_ready.set()

    def _on_disconnect(self, _client, _userdata, _flags, reason_code, _properties) -> None:
        self._lost_reason = str(reason_code)
        self._lost.set()
        self._connack_ready.set()
        self._replies.put((b"", None, b""))
        self._fetcher.wake()
        if self._session is not None:
            self._session.end(lost=True)
        logger.debug("disconnected from broker %s: %s", self.peer, reason_code)

    def _on_message(self, _client, _userdata, message: paho.MQTTMessage) -> None:
        topic = message.topic
        properties = getattr(message, "properties", None)
        if topic == self._topics.topic(TopicKind.REGISTER_REPLY):
            correlation = getattr(properties, "CorrelationData", None) or b"?"
            self._replies.put((correlation, properties, message.payload))
        elif topic == self._topics.topic(TopicKind.ARTIFACT_CHUNKS):
            self._fetcher.deliver(message.payload, properties)
        elif topic in (
            self._topics.topic(TopicKind.COMMANDS),
            self._topics.topic(TopicKind.DESIRED),
        ):
            self._deliver_command(message)

    def _deliver_command(self, message: paho.MQTTMessage) -> None:
        if not message.payload:
            return  # a cleared retained desired variant
        try:
            command = fleet_pb2.Command.FromString(message.payload)
        except Exception as exc:  # protobuf's DecodeError
            logger.warning("ignoring an undecodable command on %s: %s", message.topic, exc)
            return
        self._commands.put(command)


class _MqttSession:
    """The session over MQTT: a publish thread for outgoing messages, a queue of commands."""

    def __init__(self, connection: MqttConnection, commands: queue.Queue) -> None:
        self._connection = connection
        self._commands: queue.Queue[fleet_pb2.Command | None] = commands
        self._ended = threading.Event()
        self._lost = False

    def start(self, outgoing: Iterable[fleet_pb2.AgentMessage]) -> None:
        threading.Thread(
            target=self._drain, args=(outgoing,), name="mqtt-publish", daemon=True
        ).start()

    def end(self, *, lost: bool) -> None:
        if self._ended.is_set():
            return
        self._lost = lost
        self._ended.set()
        self._commands.put(None)

    def cancel(self) -> None:
        self.end(lost=False)

    def __iter__(self) -> Iterator[fleet_pb2.ControllerMessage]:
        while (item := self._commands.get()) is not None:
            if isinstance(item, fleet_pb2.ControllerMessage):
                yield item  # a receipt made from a PUBACK
            else:
                yield fleet_pb2.ControllerMessage(command=item)
        if self._lost:
            raise ControllerUnavailable(self._connection.lost_message())

    def _drain(self, outgoing: Iterable[fleet_pb2.AgentMessage]) -> None:
        # The iterable blocks on the daemon's outbox and ends when the session closes.
        try:
            for message in outgoing:
                if self._ended.is_set():
                    return
                info = self._connection.publish_agent_message(message)
                if info is not None and message.HasField("telemetry"):
                    self._await_puback(info, message.telemetry.seq)
        except ControllerUnavailable as exc:
            logger.warning("session publishing stopped: %s", exc)
            self.end(lost=True)

    def _await_puback(self, info: paho.MQTTMessageInfo, seq: int) -> None:
        # The broker's PUBACK means it accepted the sample, so the agent may delete it from
        # its backlog. Waiting for each PUBACK caps the rate at one sample per round trip
        # to the broker, far above the backlog's drain rate.
        # NOTE: the controller subscribes with clean_start, so a sample that reaches the
        # broker while no controller is subscribed is acknowledged and then discarded.
        while not info.is_published():
            if self._ended.is_set():
                return
            try:
                info.wait_for_publish(timeout=_PUBACK_POLL_S)
            except (RuntimeError, ValueError):
                return  # the connection dropped; the sample stays in the backlog
        receipt = fleet_pb2.SessionAck(telemetry_seq=seq, controller_time_ms=0)
        self._commands.put(fleet_pb2.ControllerMessage(ack=receipt))
