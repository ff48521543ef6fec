"""gRPC client of ``FleetService``, with gRPC errors translated into agent errors.

Each ``ControllerClient`` owns one channel. The agent opens a new client for every
connection attempt instead of relying on the channel's own reconnect, whose backoff grows
to two minutes by default and would delay recovery after a controller restart.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

import grpc

from edgefleet.agent.errors import ControllerUnavailable, RegistrationRejected
from edgefleet.protos.limits import CHANNEL_OPTIONS
from edgefleet.protos.v1 import fleet_pb2, fleet_pb2_grpc

__all__ = ["TRANSIENT_CODES", "ControllerClient", "translate_rpc_error"]

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
    """One channel to the controller at ``target`` (``host:port``)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._channel = grpc.insecure_channel(target, options=list(CHANNEL_OPTIONS))
        self.stub = fleet_pb2_grpc.FleetServiceStub(self._channel)

    def register(self, request: fleet_pb2.RegisterRequest) -> fleet_pb2.RegisterResponse:
        """Register the device; raises ``RegistrationRejected`` or ``ControllerUnavailable``."""
        try:
            return self.stub.Register(request, timeout=REGISTER_TIMEOUT_S)
        except grpc.RpcError as exc:
            raise translate_rpc_error(exc, f"registration at {self.target}") from exc

    def open_session(
        self, outgoing: Iterable[fleet_pb2.AgentMessage]
    ) -> Iterator[fleet_pb2.ControllerMessage]:
        """Start the session stream; the returned ``grpc.Call`` iterates commands."""
        return self.stub.Session(iter(outgoing))

    def close(self) -> None:
        self._channel.close()


def translate_rpc_error(exc: grpc.RpcError, action: str) -> Exception:
    """Map a gRPC error to ``ControllerUnavailable`` or ``RegistrationRejected``."""
    code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    message = f"{action} failed: {code.name}: {details}"
    if code in TRANSIENT_CODES:
        return ControllerUnavailable(message)
    return RegistrationRejected(message)
