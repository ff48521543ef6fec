"""The MQTT side of the fleet simulator: many paho clients on one asyncio event loop.

``MqttDriver`` drives every client of a process through paho's external-loop interface.
The event loop watches each client's socket (``add_reader``/``add_writer``) and calls
``loop_read`` or ``loop_write`` when it is ready. One task calls ``loop_misc`` of every
client once a second for keepalive pings. So a connection costs a paho client and
a socket, not a network thread, and one process keeps thousands open.

``MqttLink`` is one simulated device's connection. It speaks the protocol of
``edgefleet.protos.mqtt`` exactly as ``edgefleet.agent.mqtt.MqttConnection`` does: a
persistent MQTT 5 session with the device id as client id, a retained OFFLINE presence as
its will, a registration request with correlation data, ONLINE presence as the session's
hello, QoS 1 telemetry and statuses, and artifact chunks requested by offset with
``WINDOW_CHUNKS`` outstanding and checked against their CRC-32.

paho calls every callback from ``loop_read``, ``loop_write`` or ``loop_misc``, so they
all run on the event loop's thread and may touch asyncio objects directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import zlib
from collections.abc import Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edgefleet.agent.errors import ArtifactError, ControllerUnavailable, RegistrationRejected
from edgefleet.agent.mqtt_artifacts import CHUNK_BYTES, MAX_CRC_FAILURES, WINDOW_CHUNKS
from edgefleet.protos.mqtt import (
    QOS,
    BrokerSettings,
    DeviceTopics,
    TopicKind,
    reply_error,
    request_properties,
)
from edgefleet.protos.v1 import fleet_pb2

__all__ = ["MqttDriver", "MqttLink"]

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
REPLY_TIMEOUT_S = 10.0
CHUNK_TIMEOUT_S = 15.0
# How often every client's loop_misc runs: keepalive pings and their timeouts.
_MISC_INTERVAL_S = 1.0
# Reply statuses that name a problem with the request itself (as in agent.mqtt).
_REJECTED_STATUSES = frozenset(
    {"INVALID_ARGUMENT", "FAILED_PRECONDITION", "PERMISSION_DENIED", "UNAUTHENTICATED"}
)
_DOWN_TOPICS = (
    TopicKind.COMMANDS,
    TopicKind.DESIRED,
    TopicKind.REGISTER_REPLY,
    TopicKind.ARTIFACT_CHUNKS,
)
_UP_TOPICS = {"telemetry": TopicKind.TELEMETRY, "status": TopicKind.STATUS}


class MqttDriver:
    """Runs the network I/O of every ``MqttLink`` of one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._clients: set[paho.Client] = set()
        self._misc_task: asyncio.Task[None] | None = None

    def attach(self, client: paho.Client) -> None:
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        if self._misc_task is None:
            self._misc_task = self._loop.create_task(self._misc())

    def close(self) -> None:
        if self._misc_task is not None:
            self._misc_task.cancel()

    def _on_socket_open(self, client: paho.Client, _userdata, sock) -> None:
        self._loop.add_reader(sock, client.loop_read)
        self._clients.add(client)

    def _on_socket_close(self, client: paho.Client, _userdata, sock) -> None:
        self._loop.remove_reader(sock)
        self._loop.remove_writer(sock)
        self._clients.discard(client)

    def _on_register_write(self, client: paho.Client, _userdata, sock) -> None:
        self._loop.add_writer(sock, client.loop_write)

    def _on_unregister_write(self, _client: paho.Client, _userdata, sock) -> None:
        self._loop.remove_writer(sock)

    async def _misc(self) -> None:
        while True:
            await asyncio.sleep(_MISC_INTERVAL_S)
            for client in list(self._clients):
                client.loop_misc()


class MqttLink:
    """One simulated device's connection to the broker; see the module docstring."""

    def __init__(self, driver: MqttDriver, settings: BrokerSettings, device_id: str) -> None:
        self._settings = settings
        self._device_id = device_id
        self._topics = DeviceTopics(device_id)
        self._topic_kinds = {self._topics.topic(kind): kind for kind in _DOWN_TOPICS}
        self._loop = asyncio.get_running_loop()
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=device_id,
            protocol=paho.MQTTv5,
            reconnect_on_failure=False,
        )
        settings.configure(client)
        offline = fleet_pb2.Presence(device_id=device_id, state=fleet_pb2.PRESENCE_STATE_OFFLINE)
        client.will_set(
            self._topics.topic(TopicKind.PRESENCE),
            offline.SerializeToString(),
            qos=QOS,
            retain=True,
        )
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        driver.attach(client)
        self._client = client

        self._connack: asyncio.Future[paho.ReasonCode] = self._loop.create_future()
        self._suback: asyncio.Future[list] = self._loop.create_future()
        self._replies: dict[bytes, asyncio.Future[tuple[Properties | None, bytes]]] = {}
        self.commands: asyncio.Queue[fleet_pb2.Command] = asyncio.Queue()
        self.lost = asyncio.Event()
        self._lost_reason = ""
        self._chunks: asyncio.Queue[tuple[Properties | None, bytes]] | None = None
        self._connected = False

    @property
    def peer(self) -> str:
        return self._settings.address.url

    def lost_message(self) -> str:
        return f"connection to broker {self.peer} lost: {self._lost_reason or 'unknown reason'}"

    # -- requests ---------------------------------------------------------------------

    async def register(self, request: fleet_pb2.RegisterRequest) -> fleet_pb2.RegisterResponse:
        """Connect, subscribe, then send the registration and wait for its reply."""
        await self._connect()
        correlation = os.urandom(8)
        reply = self._loop.create_future()
        self._replies[correlation] = reply
        self._publish(
            TopicKind.REGISTER,
            request.SerializeToString(),
            properties=request_properties(correlation),
        )
        try:
            properties, payload = await self._wait(reply, REPLY_TIMEOUT_S, "registration reply")
        finally:
            self._replies.pop(correlation, None)
        error = reply_error(properties)
        if error is not None:
            status, message = error
            text = f"registration of {self._device_id} failed: {status}: {message}"
            if status in _REJECTED_STATUSES:
                raise RegistrationRejected(text)
            raise ControllerUnavailable(text)
        try:
            return fleet_pb2.RegisterResponse.FromString(payload)
        except Exception as exc:  # protobuf's DecodeError
            raise ControllerUnavailable(f"invalid registration reply: {exc}") from exc

    async def _connect(self) -> None:
        address = self._settings.address
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = self._settings.session_expiry_s
        try:
            # NOTE: paho's connect() opens the TCP connection with a blocking call. On
            # loopback or a LAN that takes well under a millisecond, so it stays on the loop.
            self._client.connect(
                address.host,
                address.port,
                keepalive=self._settings.keepalive_s,
                clean_start=False,
                properties=properties,
            )
        except OSError as exc:
            raise ControllerUnavailable(f"cannot connect to broker {self.peer}: {exc}") from exc
        self._connected = True

        reason = await self._wait(self._connack, CONNECT_TIMEOUT_S, "CONNACK")
        if reason.is_failure:
            raise ControllerUnavailable(
                f"broker {self.peer} refused the connection of {self._device_id}: {reason}"
            )

        options = SubscribeOptions(qos=QOS)
        topics = [(self._topics.topic(kind), options) for kind in _DOWN_TOPICS]
        result, _mid = self._client.subscribe(topics)
        if result != paho.MQTT_ERR_SUCCESS:
            raise ControllerUnavailable(f"subscribing at broker {self.peer} failed")
        codes = await self._wait(self._suback, CONNECT_TIMEOUT_S, "SUBACK")
        if any(code.is_failure for code in codes):
            raise RegistrationRejected(
                f"broker {self.peer} rejected the subscriptions of {self._device_id}"
            )

    async def _wait(self, future: asyncio.Future, timeout_s: float, what: str):
        lost = asyncio.ensure_future(self.lost.wait())
        try:
            done, _pending = await asyncio.wait(
                {future, lost}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            lost.cancel()
        if future in done:
            return future.result()
        if self.lost.is_set():
            raise ControllerUnavailable(self.lost_message())
        raise ControllerUnavailable(f"no {what} within {timeout_s:g} s through broker {self.peer}")

    async def open_session(self, current_variant_id: str) -> None:
        """Publish the ONLINE presence, which opens the session at the controller."""
        online = fleet_pb2.Presence(
            device_id=self._device_id,
            state=fleet_pb2.PRESENCE_STATE_ONLINE,
            current_variant_id=current_variant_id,
        )
        self._publish(TopicKind.PRESENCE, online.SerializeToString(), retain=True)

    async def send(self, message: fleet_pb2.AgentMessage) -> None:
        """Publish a telemetry sample or a deployment status at QoS 1."""
        kind = message.WhichOneof("body") or ""
        self._publish(_UP_TOPICS[kind], getattr(message, kind).SerializeToString())
        if kind == "status" and message.status.state == fleet_pb2.DEPLOYMENT_STATE_ACTIVE:
            # The retained presence names the served variant, as the real agent's does.
            await self.open_session(message.status.variant_id)

    async def fetch(
        self, *, sha256: str, size: int, sink: Callable[[bytes], None], timeout_s: float
    ) -> None:
        """Request every chunk of ``sha256`` in order and pass its data to ``sink``."""
        self._chunks = asyncio.Queue()
        try:
            await asyncio.wait_for(self._transfer(sha256, size, sink), timeout_s)
        except TimeoutError:
            raise ControllerUnavailable(
                f"download of {sha256} did not finish within {timeout_s:.0f} s"
            ) from None
        finally:
            self._chunks = None

    async def _transfer(self, sha256: str, size: int, sink: Callable[[bytes], None]) -> None:
        offset = 0
        next_request = 0
        outstanding: set[int] = set()
        held: dict[int, bytes] = {}
        crc_failures = 0
        while offset < size:
            while next_request < size and len(outstanding) < WINDOW_CHUNKS:
                self._request_chunk(sha256, next_request)
                outstanding.add(next_request)
                next_request += CHUNK_BYTES
            chunk = await self._next_chunk(sha256)
            if chunk is None or chunk.offset < offset or chunk.offset in held:
                continue  # another artifact's chunk, or a redelivered duplicate
            if zlib.crc32(chunk.data) != chunk.crc32 or chunk.total_size != size:
                crc_failures += 1
                if crc_failures > MAX_CRC_FAILURES:
                    raise ArtifactError(f"download of {sha256}: chunks failed their CRC-32")
                self._request_chunk(sha256, chunk.offset)
                continue
            if not chunk.data:
                raise ArtifactError(f"download of {sha256}: empty chunk at byte {chunk.offset}")
            outstanding.discard(chunk.offset)
            held[chunk.offset] = chunk.data
            while offset in held:
                data = held.pop(offset)
                sink(data)
                offset += len(data)
            if offset < size and offset not in outstanding and offset not in held:
                # A shorter chunk than requested: ask for the gap.
                self._request_chunk(sha256, offset)
                outstanding.add(offset)
                next_request = max(next_request, offset + CHUNK_BYTES)

    async def _next_chunk(self, sha256: str) -> fleet_pb2.ArtifactChunk | None:
        assert self._chunks is not None
        delivery = asyncio.ensure_future(self._chunks.get())
        properties, payload = await self._wait(delivery, CHUNK_TIMEOUT_S, "artifact chunk")
        error = reply_error(properties)
        if error is not None:
            status, message = error
            text = f"controller rejected the download of {sha256}: {status}: {message}"
            if status in ("NOT_FOUND", "OUT_OF_RANGE", "INVALID_ARGUMENT", "FAILED_PRECONDITION"):
                raise ArtifactError(text)
            raise ControllerUnavailable(text)
        try:
            chunk = fleet_pb2.ArtifactChunk.FromString(payload)
        except Exception:  # protobuf's DecodeError
            return None
        return chunk if chunk.sha256 == sha256 else None

    def _request_chunk(self, sha256: str, offset: int) -> None:
        request = fleet_pb2.ArtifactRequest(
            device_id=self._device_id, sha256=sha256, offset=offset, chunk_size=CHUNK_BYTES
        )
        self._publish(TopicKind.ARTIFACT_REQUEST, request.SerializeToString())

    async def close(self) -> None:
        """Publish OFFLINE presence and disconnect; the will covers a lost connection."""
        if not self._connected:
            return
        if not self.lost.is_set():
            offline = fleet_pb2.Presence(
                device_id=self._device_id, state=fleet_pb2.PRESENCE_STATE_OFFLINE
            )
            with contextlib.suppress(ControllerUnavailable):
                self._publish(TopicKind.PRESENCE, offline.SerializeToString(), retain=True)
            self._client.disconnect()
            # Give the event loop a moment to write both packets before the socket closes.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.lost.wait(), 2.0)
        self._connected = False

    def _publish(
        self,
        kind: TopicKind,
        payload: bytes,
        *,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> None:
        if self.lost.is_set():
            raise ControllerUnavailable(self.lost_message())
        info = self._client.publish(
            self._topics.topic(kind), payload, qos=QOS, retain=retain, properties=properties
        )
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise ControllerUnavailable(
                f"publishing to broker {self.peer} failed: {paho.error_string(info.rc)}"
            )

    # -- paho callbacks (event loop thread) --------------------------------------------

    def _on_connect(self, _client, _userdata, _flags, reason_code, _properties) -> None:
        if not self._connack.done():
            self._connack.set_result(reason_code)

    def _on_subscribe(self, _client, _userdata, _mid, reason_codes, _properties) -> None:
        if not self._suback.done():
            self._suback.set_result(list(reason_codes))

    def _on_disconnect(self, _client, _userdata, _flags, reason_code, _properties) -> None:
        self._lost_reason = str(reason_code)
        self.lost.set()

    def _on_message(self, _client, _userdata, message: paho.MQTTMessage) -> None:
        kind = self._topic_kinds.get(message.topic)
        properties = getattr(message, "properties", None)
        if kind is TopicKind.REGISTER_REPLY:
            correlation = getattr(properties, "CorrelationData", None) or b""
            reply = self._replies.get(correlation)
            if reply is not None and not reply.done():
                reply.set_result((properties, message.payload))
        elif kind is TopicKind.ARTIFACT_CHUNKS:
            if self._chunks is not None:
                self._chunks.put_nowait((properties, message.payload))
        elif kind in (TopicKind.COMMANDS, TopicKind.DESIRED) and message.payload:
            try:
                self.commands.put_nowait(fleet_pb2.Command.FromString(message.payload))
            except Exception as exc:  # protobuf's DecodeError
                logger.warning("ignoring an undecodable command on %s: %s", message.topic, exc)
