"""The agent's side of the transport seam, and its gRPC implementation.

The daemon talks to the controller through a ``ControllerConnection``: one connection
attempt, which registers, opens the session and downloads artifacts. ``ControllerClient``
implements it over gRPC and ``edgefleet.agent.mqtt.MqttConnection`` over an MQTT broker.
Both carry the same ``edgefleet.v1`` messages and raise the same agent errors:
``ControllerUnavailable`` for what a reconnect may fix and ``RegistrationRejected`` for a
rejection.

Each ``ControllerClient`` owns one channel. The agent opens a new client for every
connection attempt instead of relying on the channel's own reconnect, whose backoff grows
to two minutes by default and would delay recovery after a controller restart.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import grpc

from edgefleet.agent.errors import ControllerUnavailable, RegistrationRejected
from edgefleet.protos.limits import CHANNEL_OPTIONS
from edgefleet.protos.v1 import fleet_pb2, fleet_pb2_grpc

if TYPE_CHECKING:
    from edgefleet.agent.identity import DeviceIdentity

__all__ = [
    "TRANSIENT_CODES",
    "ControllerClient",
    "ControllerConnection",
    "SessionCall",
    "TransportKind",
    "translate_rpc_error",
]


class TransportKind(enum.StrEnum):
    """Transport between the agent and the controller."""

    GRPC = "grpc"
    MQTT = "mqtt"


class SessionCall(Protocol):
    """An open session: iterating yields commands until the session ends.

    Iteration raises ``ControllerUnavailable`` when the connection drops, and returns
    normally after ``cancel`` or when the controller ends the session.
    """

    def __iter__(self) -> Iterator[fleet_pb2.ControllerMessage]: ...

    def cancel(self) -> None: ...


class ControllerConnection(Protocol):
    """One connection attempt to the controller; the agent makes a new one per attempt."""

    @property
    def peer(self) -> str:
        """The controller address or broker URL, for logs."""
        ...

    def register(self, request: fleet_pb2.RegisterRequest) -> fleet_pb2.RegisterResponse: ...

    def open_session(self, outgoing: Iterable[fleet_pb2.AgentMessage]) -> SessionCall:
        """Send ``outgoing`` (a hello first) on a new session and return it."""
        ...

    def fetch_artifact(
        self,
        part_path: Path,
        *,
        device_id: str,
        sha256: str,
        size_bytes: int,
        timeout_s: float | None = None,
    ) -> Path:
        """Download an artifact into ``part_path``, resuming from the bytes it has."""
        ...

    def close(self) -> None: ...


logger = logging.getLogger(__name__)

# Codes after which the same call may succeed later: the controller is down, overloaded,
# restarting, or the connection dropped.
TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    }
)

REGISTER_TIMEOUT_S = 10.0


class ControllerClient:
    """One channel to the controller at ``target`` (``host:port``).

    With an enrolled ``identity`` the channel uses mutual TLS and trusts only the
    controller certificate pinned at enrollment; without one it is plaintext.
    """

    def __init__(self, target: str, *, identity: DeviceIdentity | None = None) -> None:
        self.target = target
        if identity is None:
            self._channel = grpc.insecure_channel(target, options=list(CHANNEL_OPTIONS))
        else:
            self._channel = grpc.secure_channel(
                target,
                identity.grpc_credentials(),
                options=[*CHANNEL_OPTIONS, *identity.channel_options()],
            )
        self.stub = fleet_pb2_grpc.FleetServiceStub(self._channel)

    @property
    def peer(self) -> str:
        return self.target

    def register(self, request: fleet_pb2.RegisterRequest) -> fleet_pb2.RegisterResponse:
        """Register the device; raises ``RegistrationRejected`` or ``ControllerUnavailable``."""
        try:
            return self.stub.Register(request, timeout=REGISTER_TIMEOUT_S)
        except grpc.RpcError as exc:
            raise translate_rpc_error(exc, f"registration at {self.target}") from exc

    def open_session(self, outgoing: Iterable[fleet_pb2.AgentMessage]) -> SessionCall:
        """Start the session stream."""
        return _GrpcSession(self.stub.Session(iter(outgoing)))

    def fetch_artifact(
        self,
        part_path: Path,
        *,
        device_id: str,
        sha256: str,
        size_bytes: int,
        timeout_s: float | None = None,
    ) -> Path:
        """Download over ``DownloadArtifact``; see ``edgefleet.agent.download``."""
        from edgefleet.agent.download import fetch_artifact

        return fetch_artifact(
            self.stub,
            part_path,
            device_id=device_id,
            sha256=sha256,
            size_bytes=size_bytes,
            timeout_s=timeout_s,
        )

    def close(self) -> None:
        self._channel.close()


class _GrpcSession:
    """The Session stream, with gRPC errors translated into ``ControllerUnavailable``."""

    def __init__(self, call: grpc.Call) -> None:
        self._call = call
        self._cancelled = False

    def __iter__(self) -> Iterator[fleet_pb2.ControllerMessage]:
        try:
            yield from self._call  # type: ignore[misc]
        except grpc.RpcError as exc:
            if not self._cancelled:
                raise translate_rpc_error(exc, "session") from exc

    def cancel(self) -> None:
        self._cancelled = True
        self._call.cancel()


def translate_rpc_error(exc: grpc.RpcError, action: str) -> Exception:
    """Map a gRPC error to ``ControllerUnavailable`` or ``RegistrationRejected``."""
    # grpc.aio's AioRpcError has code() and details() but is not a grpc.Call.
    has_status = callable(getattr(exc, "code", None)) and callable(getattr(exc, "details", None))
    code = exc.code() if has_status else grpc.StatusCode.UNKNOWN
    details = exc.details() if has_status else str(exc)
    message = f"{action} failed: {code.name}: {details}"
    if code in TRANSIENT_CODES:
        return ControllerUnavailable(message)
    return RegistrationRejected(message)
