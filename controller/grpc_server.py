"""The gRPC endpoint: ``FleetServicer`` translates ``edgefleet.v1.FleetService`` calls into
``Controller`` calls, and controller errors into gRPC status codes.

The server is synchronous, so each RPC occupies a pool thread for its whole life. An open
Session stream also needs one more thread outside the pool (``session-reader-<device>``)
that reads incoming messages, because the handler thread blocks while writing commands.
Message sizes are capped at 4 MiB in both directions by ``SERVER_OPTIONS``;
gRPC itself rejects an oversized message with RESOURCE_EXHAUSTED.

In secure mode every RPC first passes ``ControllerTrust.authenticate``: the device id that
the request names must be the one in the peer's client certificate, and that certificate
must not be revoked (UNAUTHENTICATED otherwise, PERMISSION_DENIED for another device's id).
``EnrollmentServicer`` runs on its own server-TLS port; see ``edgefleet.controller.trust``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, NoReturn

import grpc

from edgefleet.controller.errors import (
    ArtifactNotFoundError,
    ArtifactRangeError,
    AuthenticationError,
    ControllerStateError,
    EnrollmentError,
    IdentityMismatchError,
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

__all__ = ["EnrollmentServicer", "FleetServicer", "create_enrollment_server", "create_server"]

logger = logging.getLogger(__name__)


class FleetServicer(fleet_pb2_grpc.FleetServiceServicer):
    """``edgefleet.v1.FleetService`` over a ``Controller``; see the module docstring."""

    def __init__(self, controller: Controller) -> None:
        self._controller = controller

    def _authenticate(self, context: grpc.ServicerContext, claimed_device_id: str) -> None:
        """Bind the RPC to the peer's certificate in secure mode; aborts the RPC on failure."""
        try:
            trust = self._controller.trust
        except ControllerStateError as exc:
            _abort(context, grpc.StatusCode.UNAVAILABLE, str(exc))
        if not trust.tls_enabled:
            return
        try:
            validate_device_id(claimed_device_id)
        except InvalidInputError as exc:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        certificates = context.auth_context().get("x509_pem_cert") or [None]
        try:
            trust.authenticate(certificates[0], claimed_device_id=claimed_device_id)
        except IdentityMismatchError as exc:
            _abort(context, grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except AuthenticationError as exc:
            _abort(context, grpc.StatusCode.UNAUTHENTICATED, str(exc))

    # -- Register -------------------------------------------------------------------

    def Register(
        self, request: fleet_pb2.RegisterRequest, context: grpc.ServicerContext
    ) -> fleet_pb2.RegisterResponse:
        self._authenticate(context, request.device_id)
        try:
            return register_device(self._controller, request)
        except AuthenticationError as exc:
            _abort(context, grpc.StatusCode.UNAUTHENTICATED, str(exc))
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
        self._authenticate(context, hello.device_id)
        try:
            session = StreamSession(validate_device_id(hello.device_id))
            self._controller.open_session(session, current_variant_id=hello.current_variant_id)
            return session
        except AuthenticationError as exc:
            _abort(context, grpc.StatusCode.UNAUTHENTICATED, str(exc))
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
                if message.WhichOneof("body") == "telemetry":
                    # Sent after the sample is handled, stored or rejected, so that the
                    # agent deletes it from its backlog and never sends it again.
                    session.send(_telemetry_ack(message.telemetry.seq))
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
        self._authenticate(context, request.device_id)
        if self._controller.is_revoked(request.device_id):
            _abort(context, grpc.StatusCode.UNAUTHENTICATED, "the device is revoked")
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


class EnrollmentServicer(fleet_pb2_grpc.EnrollmentServiceServicer):
    """``edgefleet.v1.EnrollmentService``: tokens and CSRs in, device certificates out."""

    def __init__(self, controller: Controller) -> None:
        self._controller = controller

    def Enroll(
        self, request: fleet_pb2.EnrollRequest, context: grpc.ServicerContext
    ) -> fleet_pb2.EnrollResponse:
        try:
            return self._controller.enroll(request)
        except EnrollmentError as exc:
            _abort(context, grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except InvalidInputError as exc:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"invalid enrollment: {exc}")
        except ControllerStateError as exc:
            _abort(context, grpc.StatusCode.UNAVAILABLE, str(exc))


def _telemetry_ack(seq: int) -> fleet_pb2.ControllerMessage:
    return fleet_pb2.ControllerMessage(
        ack=fleet_pb2.SessionAck(telemetry_seq=seq, controller_time_ms=int(time.time() * 1000))
    )


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    logger.info("rejected RPC with %s: %s", code.name, message)
    context.abort(code, message)
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


def create_server(
    controller: Controller,
    *,
    host: str,
    port: int,
    max_workers: int,
    credentials: grpc.ServerCredentials | None = None,
) -> tuple[grpc.Server, int]:
    """Build (but do not start) the gRPC server; returns it with its bound port.

    ``credentials`` makes the port a TLS one; None serves plaintext.
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
    return server, _bind(server, host=host, port=port, credentials=credentials)


def create_enrollment_server(
    controller: Controller, *, host: str, port: int, credentials: grpc.ServerCredentials
) -> tuple[grpc.Server, int]:
    """Build (but do not start) the enrollment server; returns it with its bound port."""
    server = grpc.server(
        ThreadPoolExecutor(max_workers=4, thread_name_prefix="enroll"),
        options=SERVER_OPTIONS,
        maximum_concurrent_rpcs=16,
    )
    fleet_pb2_grpc.add_EnrollmentServiceServicer_to_server(EnrollmentServicer(controller), server)
    return server, _bind(server, host=host, port=port, credentials=credentials)


def _bind(
    server: grpc.Server, *, host: str, port: int, credentials: grpc.ServerCredentials | None
) -> int:
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        if credentials is None:
            bound_port = server.add_insecure_port(address)
        else:
            bound_port = server.add_secure_port(address, credentials)
    except RuntimeError:
        # grpcio raises RuntimeError without the cause; a port in use is the common one.
        bound_port = 0
    if bound_port == 0:
        raise OSError(
            f"cannot bind the gRPC server to {address}: the port is in use or the address "
            "is invalid; choose another port or stop the process that holds it"
        )
    return bound_port
