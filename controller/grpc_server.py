"""The gRPC endpoint: ``FleetServicer`` translates ``edgefleet.v1.FleetService`` calls into
``Controller`` calls, and controller errors into gRPC status codes.

The server is synchronous, so each RPC occupies a pool thread for its whole life. An open
Session stream also needs one more thread outside the pool (``session-reader-<device>``)
that reads incoming messages, because the handler thread blocks while writing commands.
Message sizes are capped at 4 MiB in both directions by ``SERVER_OPTIONS``;
gRPC itself rejects an oversized message with RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, NoReturn

import grpc

from edgefleet.controller.errors import (
    ArtifactNotFoundError,
    ArtifactRangeError,
    ControllerStateError,
    UnknownDeviceError,
)
from edgefleet.controller.requests import open_artifact, register_device
from edgefleet.controller.sessions import StreamSession
from edgefleet.errors import InvalidInputError
from edgefleet.ids import validate_device_id
from edgefleet.protos.limits import SERVER_OPTIONS
from edgefleet.protos.v1 import fleet_pb2, fleet_pb2_grpc

if TYPE_CHECKING:
    from edgefleet.controller.service import Controller

__all__ = ["FleetServicer", "create_server"]

logger = logging.getLogger(__name__)


class FleetServicer(fleet_pb2_grpc.FleetServiceServicer):
    """``edgefleet.v1.FleetService`` over a ``Controller``; see the module docstring."""

    def __init__(self, controller: Controller) -> None:
        self._controller = controller

    # -- Register -------------------------------------------------------------------

    def Register(
        self, request: fleet_pb2.RegisterRequest, context: grpc.ServicerContext
    ) -> fleet_pb2.RegisterResponse:
        try:
            return register_device(self._controller, request)
        except InvalidInputError as exc:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"invalid registration: {exc}")
        except ControllerStateError as exc:
            _abort(context, grpc.StatusCode.UNAVAILABLE, str(exc))

    # -- Session --------------------------------------------------------------------

    def Session(
        self, request_iterator: Iterator[fleet_pb2.AgentMessage], context: grpc.ServicerContext
    ) -> Iterator[fleet_pb2.ControllerMessage]:
        session = self._open_session(request_iterator, context)
        # Runs when the RPC ends for any reason (client cancel, deadline, server stop),
        # waking the handler thread blocked in session.outgoing().
        context.add_callback(session.close)
        reader = threading.Thread(
            target=self._read_messages,
            args=(request_iterator, session),
            name=f"session-reader-{session.device_id}",
            daemon=True,
        )
        reader.start()
        try:
            yield from session.outgoing()
        finally:
            session.close()
            self._controller.close_session(session)

    def _open_session(
        self, request_iterator: Iterator[fleet_pb2.AgentMessage], context: grpc.ServicerContext
    ) -> StreamSession:
        try:
            first = next(request_iterator)
        except StopIteration:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "session ended before its hello")
        if first.WhichOneof("body") != "hello":
            _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the first session message must be hello, got {first.WhichOneof('body')}",
            )
        hello = first.hello
        try:
            session = StreamSession(validate_device_id(hello.device_id))
            self._controller.open_session(session, current_variant_id=hello.current_variant_id)
            return session
        except UnknownDeviceError:
            _abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"device {hello.device_id!r} is not registered; register first",
            )
        except InvalidInputError as exc:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"invalid hello: {exc}")
        except ControllerStateError as exc:
            _abort(context, grpc.StatusCode.UNAVAILABLE, str(exc))

    def _read_messages(
        self, request_iterator: Iterator[fleet_pb2.AgentMessage], session: StreamSession
    ) -> None:
        device_id = session.device_id
        try:
            for message in request_iterator:
                if session.closed:
                    break
                self._dispatch(device_id, message)
        except grpc.RpcError as exc:
            # The client cancelled or the connection broke; the session simply ends.
            logger.debug("session of device %s ended: %s", device_id, exc)
        except ControllerStateError:
            logger.debug("controller stopping; ending the session of device %s", device_id)
        finally:
            session.close()

    def _dispatch(self, device_id: str, message: fleet_pb2.AgentMessage) -> None:
        kind = message.WhichOneof("body")
        try:
            if kind == "telemetry":
                self._controller.ingest_telemetry(device_id, message.telemetry)
            elif kind == "status":
                self._controller.handle_status(device_id, message.status)
            else:
                logger.warning(
                    "device %s sent an unexpected %s message; ignoring it", device_id, kind
                )
        except ControllerStateError:
            raise
        except Exception:
            # One bad message must not end a device's session: log it and read the next.
            logger.exception("handling a %s message from device %s failed", kind, device_id)

    # -- DownloadArtifact -----------------------------------------------------------

    def DownloadArtifact(
        self, request: fleet_pb2.ArtifactRequest, context: grpc.ServicerContext
    ) -> Iterator[fleet_pb2.ArtifactChunk]:
        try:
            total, chunks = open_artifact(self._controller, request)
        except UnknownDeviceError as exc:
            _abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except ArtifactNotFoundError:
            _abort(context, grpc.StatusCode.NOT_FOUND, f"no artifact with sha256 {request.sha256}")
        except ArtifactRangeError as exc:
            _abort(context, grpc.StatusCode.OUT_OF_RANGE, str(exc))
        except InvalidInputError as exc:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except ControllerStateError as exc:
            _abort(context, grpc.StatusCode.UNAVAILABLE, str(exc))

        if request.offset == total:
            # Nothing is left to send, but one empty chunk still gives a resuming client
            # the total size.
            yield fleet_pb2.ArtifactChunk(sha256=request.sha256, offset=total, total_size=total)
            return
        for offset, data in chunks:
            if not context.is_active():
                return
            yield fleet_pb2.ArtifactChunk(
                sha256=request.sha256, offset=offset, total_size=total, data=data
            )


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    logger.info("rejected RPC with %s: %s", code.name, message)
    context.abort(code, message)
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


def create_server(
    controller: Controller, *, host: str, port: int, max_workers: int
) -> tuple[grpc.Server, int]:
    """Build (but do not start) the gRPC server; returns it with its bound port.

    Raises ``OSError`` when the address cannot be bound.
    """
    server = grpc.server(
        ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        options=SERVER_OPTIONS,
        # Reject RPCs beyond the pool size at once (RESOURCE_EXHAUSTED), instead of
        # queueing them behind long-lived session streams that never free a thread.
        maximum_concurrent_rpcs=max_workers,
    )
    fleet_pb2_grpc.add_FleetServiceServicer_to_server(FleetServicer(controller), server)
    # NOTE: plaintext; TLS and device authentication are not implemented yet, so bind
    # to loopback or a trusted network only.
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound_port = server.add_insecure_port(address)
    except RuntimeError:
        # grpcio raises RuntimeError without the cause; a port in use is the common one.
        bound_port = 0
    if bound_port == 0:
        raise OSError(
            f"cannot bind the gRPC server to {address}: the port is in use or the address "
            "is invalid; choose another --grpc-port or stop the process that holds it"
        )
    return server, bound_port
