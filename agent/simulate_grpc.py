"""The gRPC side of the fleet simulator: one ``grpc.aio`` channel per simulated device.

``GrpcLink`` speaks ``edgefleet.v1.FleetService`` as ``edgefleet.agent.transport`` does:
``Register``, then a ``Session`` stream that opens with a hello and carries telemetry and
statuses up and commands down, and ``DownloadArtifact`` for the chunks of a deployment.
Each device gets its own channel, so its own TCP connection, as a real device has.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc
from grpc import aio

from edgefleet.agent.errors import ArtifactError, ControllerUnavailable
from edgefleet.agent.transport import REGISTER_TIMEOUT_S, translate_rpc_error
from edgefleet.protos.limits import ARTIFACT_CHUNK_BYTES, CHANNEL_OPTIONS
from edgefleet.protos.v1 import fleet_pb2, fleet_pb2_grpc

__all__ = ["GrpcLink"]

logger = logging.getLogger(__name__)

# Codes that mean the download request itself is wrong, so retrying cannot help.
# Opening a session and closing a channel are bounded, so an agent whose call never
# completes reconnects or stops instead of waiting past the end of the run.
_SESSION_OPEN_TIMEOUT_S = 10.0
_CLOSE_TIMEOUT_S = 5.0

_FATAL_DOWNLOAD_CODES = frozenset(
    {
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
    }
)


class GrpcLink:
    """One simulated device's channel to the controller at ``target`` (``host:port``)."""

    def __init__(self, target: str, device_id: str) -> None:
        self.target = target
        self._device_id = device_id
        self._channel = aio.insecure_channel(target, options=list(CHANNEL_OPTIONS))
        self._stub = fleet_pb2_grpc.FleetServiceStub(self._channel)
        self._call: aio.StreamStreamCall | None = None
        self._reader: asyncio.Task[None] | None = None
        # grpc.aio allows one write in flight per stream; a second one fails the call with
        # GRPC_CALL_ERROR_TOO_MANY_OPERATIONS. Telemetry and deployment reports take turns.
        self._write_lock = asyncio.Lock()
        self.commands: asyncio.Queue[fleet_pb2.Command] = asyncio.Queue()
        self.lost = asyncio.Event()
        self._lost_reason = ""

    def lost_message(self) -> str:
        return f"session with {self.target} ended: {self._lost_reason or 'closed by the peer'}"

    async def register(self, request: fleet_pb2.RegisterRequest) -> fleet_pb2.RegisterResponse:
        try:
            return await self._stub.Register(request, timeout=REGISTER_TIMEOUT_S)
        except grpc.RpcError as exc:
            raise translate_rpc_error(exc, f"registration at {self.target}") from exc

    async def open_session(self, current_variant_id: str) -> None:
        self._call = self._stub.Session()
        hello = fleet_pb2.SessionHello(
            device_id=self._device_id, current_variant_id=current_variant_id
        )
        try:
            await asyncio.wait_for(
                self.send(fleet_pb2.AgentMessage(hello=hello)), _SESSION_OPEN_TIMEOUT_S
            )
        except TimeoutError as exc:
            raise ControllerUnavailable(
                f"session with {self.target} did not open within {_SESSION_OPEN_TIMEOUT_S:g} s"
            ) from exc
        self._reader = asyncio.create_task(self._read(self._call))

    async def _read(self, call: aio.StreamStreamCall) -> None:
        try:
            async for message in call:
                if message.WhichOneof("body") == "command":
                    self.commands.put_nowait(message.command)
        except grpc.RpcError as exc:
            self._lost_reason = f"{exc.code().name}: {exc.details()}"
        finally:
            self.lost.set()

    async def send(self, message: fleet_pb2.AgentMessage) -> None:
        if self._call is None or self.lost.is_set():
            raise ControllerUnavailable(self.lost_message())
        try:
            async with self._write_lock:
                await self._call.write(message)
        except (grpc.RpcError, aio.UsageError) as exc:
            # UsageError: the stream already ended, which the reader reports as lost.
            raise ControllerUnavailable(f"session with {self.target} failed: {exc}") from exc

    async def fetch(
        self, *, sha256: str, size: int, sink: Callable[[bytes], None], timeout_s: float
    ) -> None:
        """Stream every chunk of ``sha256`` in order into ``sink``."""
        request = fleet_pb2.ArtifactRequest(
            device_id=self._device_id, sha256=sha256, offset=0, chunk_size=ARTIFACT_CHUNK_BYTES
        )
        offset = 0
        try:
            async for chunk in self._stub.DownloadArtifact(request, timeout=timeout_s):
                if chunk.offset != offset or chunk.total_size != size:
                    raise ArtifactError(
                        f"invalid chunk while downloading {sha256}: offset {chunk.offset} and "
                        f"total {chunk.total_size}, expected {offset} and {size}"
                    )
                sink(chunk.data)
                offset += len(chunk.data)
        except grpc.RpcError as exc:
            message = f"download of {sha256} failed: {exc.code().name}: {exc.details()}"
            if exc.code() in _FATAL_DOWNLOAD_CODES:
                raise ArtifactError(message) from exc
            raise ControllerUnavailable(message) from exc

    async def close(self) -> None:
        if self._call is not None:
            self._call.cancel()
        if self._reader is not None:
            # The reader ends with the cancelled call; it is awaited for at most _CLOSE_TIMEOUT_S.
            await asyncio.wait({self._reader}, timeout=_CLOSE_TIMEOUT_S)
            self._reader.cancel()
        try:
            await asyncio.wait_for(self._channel.close(), _CLOSE_TIMEOUT_S)
        except TimeoutError:
            logger.warning(
                "channel of simulated device %s to %s did not close within %g s",
                self._device_id,
                self.target,
                _CLOSE_TIMEOUT_S,
            )
