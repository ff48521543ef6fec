"""The gRPC endpoint: ``FleetServicer`` translates ``edgefleet.v1.FleetService`` calls into
``Controller`` calls, and controller errors into gRPC status codes.

The server runs on ``grpc.aio`` in one thread with its own event loop (``GrpcServer``),
so an open Session stream costs a coroutine and a queue, not a thread, and one process
keeps thousands of connected devices. The ``Controller`` stays synchronous: each
blocking call (database, artifact file) runs in a thread pool of ``max_workers``
threads, awaited by the coroutine of its RPC. Telemetry goes into the controller's
batched ingest without a thread hop unless its queue is full (see
``edgefleet.controller.ingest``).

Telemetry receipts: the agent keeps each sample until a ``SessionAck`` with its seq or a
higher one arrives. The ingest thread records the highest stored seq of each stream, and
the loop sends each stream with new stored samples one ``SessionAck`` every
``RECEIPT_INTERVAL_S``, not one per sample.

Message sizes are capped at 4 MiB in both directions by ``SERVER_OPTIONS``; gRPC itself
rejects an oversized message with RESOURCE_EXHAUSTED.

In secure mode every RPC first passes ``ControllerTrust.authenticate``: the device id that
the request names must be the one in the peer's client certificate, and that certificate
must not be revoked (UNAUTHENTICATED otherwise, PERMISSION_DENIED for another device's id).
``EnrollmentServicer`` runs on its own server-TLS port, on a small synchronous server; see
``edgefleet.controller.trust``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import grpc
from grpc import aio

from edgefleet.controller.errors import (
    ArtifactNotFoundError,
    ArtifactRangeError,
    AuthenticationError,
    ControllerStateError,
    EnrollmentError,
    IdentityMismatchError,
    RateLimitedError,
    UnknownDeviceError,
)
from edgefleet.controller.requests import open_artifact, register_device
from edgefleet.controller.sessions import DeviceSession
from edgefleet.errors import InvalidInputError
from edgefleet.ids import validate_device_id
from edgefleet.protos.limits import SERVER_OPTIONS
from edgefleet.protos.v1 import fleet_pb2, fleet_pb2_grpc

if TYPE_CHECKING:
    from edgefleet.controller.service import Controller

__all__ = [
    "AioStreamSession",
    "EnrollmentServicer",
    "FleetServicer",
    "GrpcServer",
    "create_enrollment_server",
    "create_server",
]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# At one sample a second this sends one receipt for two samples, where a receipt per
# sample doubled the messages a stream carries. The cost: when a stream breaks, the
# samples stored in its last interval have no receipt, and the agent sends them again.
RECEIPT_INTERVAL_S = 2.0
# How long ``GrpcServer.stop`` waits for the event loop to queue the last receipts.
_RECEIPT_FLUSH_TIMEOUT_S = 5.0


class _ReceiptBook:
    """Streams with samples stored since their last ``SessionAck``, and the highest seq."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[AioStreamSession, int] = {}

    def record(self, session: AioStreamSession, seq: int) -> None:
        # Called on the ingest thread.
        with self._lock:
            if seq > self._pending.get(session, -1):
                self._pending[session] = seq

    def take(self) -> dict[AioStreamSession, int]:
        with self._lock:
            pending, self._pending = self._pending, {}
        return pending


class AioStreamSession(DeviceSession):
    """A gRPC Session stream: ``send`` may run on any thread, ``outgoing`` on the loop."""

    transport = "grpc"

    def __init__(
        self,
        device_id: str,
        loop: asyncio.AbstractEventLoop,
        receipts: _ReceiptBook | None = None,
    ) -> None:
        super().__init__(device_id)
        self._loop = loop
        self._queue: asyncio.Queue[fleet_pb2.ControllerMessage | None] = asyncio.Queue()
        self._receipts = receipts or _ReceiptBook()

    def record_stored(self, seq: int) -> None:
        """Record that the samples up to ``seq`` are stored. The loop sends the receipt later."""
        self._receipts.record(self, seq)

    def send(self, message: fleet_pb2.ControllerMessage) -> bool:
        """Queue ``message``; returns False if the session or the server is closed."""
        if self._closed.is_set():
            return False
        return self._post(message)

    def send_on_loop(self, message: fleet_pb2.ControllerMessage) -> bool:
        """Queue ``message`` from the loop's thread; returns False if the session is closed."""
        if self._closed.is_set():
            return False
        self._queue.put_nowait(message)
        return True

    def close(self) -> None:
        """End the session; ``outgoing`` returns after the messages queued so far."""
        if not self._closed.is_set():
            self._closed.set()
            self._post(None)

    def _post(self, item: fleet_pb2.ControllerMessage | None) -> bool:
        # asyncio.Queue is not thread-safe, so the put runs on the loop's thread.
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: the server has stopped
            return False
        return True

    async def outgoing(self) -> AsyncIterator[fleet_pb2.ControllerMessage]:
        """Yield queued messages until the session closes."""
        while (message := await self._queue.get()) is not None:
            yield message


class FleetServicer(fleet_pb2_grpc.FleetServiceServicer):
    """``edgefleet.v1.FleetService`` over a ``Controller``; see the module docstring."""

    def __init__(self, controller: Controller, executor: ThreadPoolExecutor) -> None:
        self._controller = controller
        self._executor = executor
        self._receipts = _ReceiptBook()

    async def send_receipts(self, interval_s: float = RECEIPT_INTERVAL_S) -> None:
        """Send each stream one ``SessionAck`` for its samples stored in each interval."""
        while True:
            await asyncio.sleep(interval_s)
            await self.send_pending_receipts()

    async def send_pending_receipts(self) -> None:
        """Send a ``SessionAck`` to each stream with samples stored since its last one."""
        now_ms = int(time.time() * 1000)
        for session, seq in self._receipts.take().items():
            session.send_on_loop(
                fleet_pb2.ControllerMessage(
                    ack=fleet_pb2.SessionAck(telemetry_seq=seq, controller_time_ms=now_ms)
                )
            )

    async def _call(self, function: Callable[..., _T], *args: Any) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(function, *args))

    async def _authenticate(self, context: aio.ServicerContext, claimed_device_id: str) -> None:
        """Bind the RPC to the peer's certificate in secure mode; aborts the RPC on failure."""
        try:
            trust = self._controller.trust
        except ControllerStateError as exc:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, str(exc))
        if not trust.tls_enabled:
            return
        try:
            validate_device_id(claimed_device_id)
        except InvalidInputError as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        certificates = context.auth_context().get("x509_pem_cert") or [None]
        try:
            trust.authenticate(certificates[0], claimed_device_id=claimed_device_id)
        except IdentityMismatchError as exc:
            await _abort(context, grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except AuthenticationError as exc:
            await _abort(context, grpc.StatusCode.UNAUTHENTICATED, str(exc))

    # -- Register -------------------------------------------------------------------

    async def Register(
        self, request: fleet_pb2.RegisterRequest, context: aio.ServicerContext
    ) -> fleet_pb2.RegisterResponse:
        await self._authenticate(context, request.device_id)
        try:
            # Admitted on the loop, before the request waits for a pool thread, so that a
            # reconnect storm is turned away at once instead of queueing.
            self._controller.admit_connection(request.device_id)
            return await self._call(register_device, self._controller, request)
        except AuthenticationError as exc:
            await _abort(context, grpc.StatusCode.UNAUTHENTICATED, str(exc))
        except InvalidInputError as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"invalid registration: {exc}")
        except RateLimitedError as exc:
            await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), quiet=True)
        except ControllerStateError as exc:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, str(exc))

    # -- Session --------------------------------------------------------------------

    async def Session(
        self,
        request_iterator: AsyncIterator[fleet_pb2.AgentMessage],
        context: aio.ServicerContext,
    ) -> AsyncIterator[fleet_pb2.ControllerMessage]:
        session = await self._open_session(request_iterator, context)
        reader = asyncio.create_task(self._read_messages(request_iterator, session))
        try:
            async for message in session.outgoing():
                yield message
        finally:
            # Runs when the stream ends for any reason: the agent closed it, the RPC was
            # cancelled, or the server is stopping.
            session.close()
            reader.cancel()
            # When shutting down, shutdown() marks every device offline itself.
            with contextlib.suppress(ControllerStateError):
                await self._call(self._controller.close_session, session)

    async def _open_session(
        self,
        request_iterator: AsyncIterator[fleet_pb2.AgentMessage],
        context: aio.ServicerContext,
    ) -> AioStreamSession:
        try:
            first = await anext(request_iterator)
        except StopAsyncIteration:
            await _abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, "session ended before its hello"
            )
        if first.WhichOneof("body") != "hello":
            await _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the first session message must be hello, got {first.WhichOneof('body')}",
            )
        hello = first.hello
        await self._authenticate(context, hello.device_id)
        try:
            session = AioStreamSession(
                validate_device_id(hello.device_id), asyncio.get_running_loop(), self._receipts
            )
            await self._call(
                functools.partial(
                    self._controller.open_session,
                    session,
                    current_variant_id=hello.current_variant_id,
                )
            )
            return session
        except AuthenticationError as exc:
            await _abort(context, grpc.StatusCode.UNAUTHENTICATED, str(exc))
        except UnknownDeviceError:
            await _abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"device {hello.device_id!r} is not registered; register first",
            )
        except InvalidInputError as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"invalid hello: {exc}")
        except ControllerStateError as exc:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, str(exc))

    async def _read_messages(
        self, request_iterator: AsyncIterator[fleet_pb2.AgentMessage], session: AioStreamSession
    ) -> None:
        device_id = session.device_id
        try:
            async for message in request_iterator:
                if session.closed:
                    break
                await self._dispatch(session, message)
        except grpc.RpcError as exc:
            # The client cancelled or the connection broke; the session simply ends.
            logger.debug("session of device %s ended: %s", device_id, exc)
        except ControllerStateError:
            logger.debug("controller stopping; ending the session of device %s", device_id)
        finally:
            session.close()

    async def _dispatch(self, session: AioStreamSession, message: fleet_pb2.AgentMessage) -> None:
        device_id = session.device_id
        kind = message.WhichOneof("body")
        try:
            if kind == "telemetry":
                # A full ingest queue blocks a pool thread, not the loop, and this stream
                # reads nothing more until it has room: backpressure, not a drop. The
                # receipt follows once the sample is stored or rejected as invalid.
                sample = message.telemetry
                on_stored = session.record_stored
                if not self._controller.offer_telemetry(device_id, sample, on_stored):
                    await self._call(
                        self._controller.submit_telemetry, device_id, sample, on_stored
                    )
            elif kind == "status":
                await self._call(self._controller.handle_status, device_id, message.status)
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

    async def DownloadArtifact(
        self, request: fleet_pb2.ArtifactRequest, context: aio.ServicerContext
    ) -> AsyncIterator[fleet_pb2.ArtifactChunk]:
        await self._authenticate(context, request.device_id)
        if self._controller.is_revoked(request.device_id):
            await _abort(context, grpc.StatusCode.UNAUTHENTICATED, "the device is revoked")
        try:
            total, chunks = await self._call(open_artifact, self._controller, request)
        except UnknownDeviceError as exc:
            await _abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except ArtifactNotFoundError:
            await _abort(
                context, grpc.StatusCode.NOT_FOUND, f"no artifact with sha256 {request.sha256}"
            )
        except ArtifactRangeError as exc:
            await _abort(context, grpc.StatusCode.OUT_OF_RANGE, str(exc))
        except InvalidInputError as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except ControllerStateError as exc:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, str(exc))

        if request.offset == total:
            # Nothing is left to send, but one empty chunk still gives a resuming client
            # the total size.
            yield fleet_pb2.ArtifactChunk(sha256=request.sha256, offset=total, total_size=total)
            return
        try:
            # The file reads run in the pool; the loop only writes the messages.
            while (item := await self._call(next, chunks, None)) is not None:
                offset, data = item
                yield fleet_pb2.ArtifactChunk(
                    sha256=request.sha256, offset=offset, total_size=total, data=data
                )
        finally:
            await self._call(chunks.close)


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
            _abort_sync(context, grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except InvalidInputError as exc:
            _abort_sync(context, grpc.StatusCode.INVALID_ARGUMENT, f"invalid enrollment: {exc}")
        except ControllerStateError as exc:
            _abort_sync(context, grpc.StatusCode.UNAVAILABLE, str(exc))


def _abort_sync(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    logger.info("rejected RPC with %s: %s", code.name, message)
    context.abort(code, message)
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


async def _abort(
    context: aio.ServicerContext, code: grpc.StatusCode, message: str, *, quiet: bool = False
) -> NoReturn:
    if not quiet:
        logger.info("rejected RPC with %s: %s", code.name, message)
    await context.abort(code, message)
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


class GrpcServer:
    """A ``grpc.aio`` server on its own event-loop thread, with a synchronous interface.

    ``start`` and ``stop`` mirror ``grpc.Server``: ``stop(grace)`` returns a
    ``threading.Event`` that is set once every RPC has ended and the loop has stopped.
    """

    def __init__(
        self,
        controller: Controller,
        *,
        host: str,
        port: int,
        max_workers: int,
        credentials: grpc.ServerCredentials | None = None,
    ) -> None:
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="grpc-aio", daemon=True)
        self._thread.start()
        self._stopped = threading.Event()
        self._receipt_sender: Future[None] | None = None
        self._address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            self._server, self.port = self._run(self._bind(controller, credentials))
        except OSError:
            self._close_loop()
            raise

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    async def _bind(
        self, controller: Controller, credentials: grpc.ServerCredentials | None
    ) -> tuple[aio.Server, int]:
        server = aio.server(options=SERVER_OPTIONS)
        self._servicer = FleetServicer(controller, self._executor)
        fleet_pb2_grpc.add_FleetServiceServicer_to_server(self._servicer, server)
        return server, _bind(server, address=self._address, credentials=credentials)

    def start(self) -> None:
        self._run(self._server.start())
        self._receipt_sender = asyncio.run_coroutine_threadsafe(
            self._servicer.send_receipts(), self._loop
        )

    def stop(self, grace: float | None) -> threading.Event:
        """Reject new RPCs at once, give open ones ``grace`` seconds, then cancel them."""
        if self._receipt_sender is not None:
            self._receipt_sender.cancel()
            # Queued before the controller closes the sessions, so agents do not send
            # again the samples stored in the last interval.
            flush = asyncio.run_coroutine_threadsafe(
                self._servicer.send_pending_receipts(), self._loop
            )
            try:
                flush.result(timeout=_RECEIPT_FLUSH_TIMEOUT_S)
            except TimeoutError:
                flush.cancel()
                logger.warning(
                    "the last telemetry receipts were not queued within %.0f s; agents "
                    "will send those samples again",
                    _RECEIPT_FLUSH_TIMEOUT_S,
                )
        future = asyncio.run_coroutine_threadsafe(self._server.stop(grace), self._loop)
        future.add_done_callback(lambda _future: self._close_loop())
        return self._stopped

    def _close_loop(self) -> None:
        # Runs on the loop's thread (stop's callback) or before the server started.
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._stopped.set()


def create_server(
    controller: Controller,
    *,
    host: str,
    port: int,
    max_workers: int,
    credentials: grpc.ServerCredentials | None = None,
) -> tuple[GrpcServer, int]:
    """Build (but do not start) the gRPC server; returns it with its bound port.

    ``credentials`` makes the port a TLS one; None serves plaintext.
    Raises ``OSError`` when the address cannot be bound.
    """
    server = GrpcServer(
        controller, host=host, port=port, max_workers=max_workers, credentials=credentials
    )
    return server, server.port


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
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return server, _bind(server, address=address, credentials=credentials)


def _bind(
    server: grpc.Server | aio.Server,
    *,
    address: str,
    credentials: grpc.ServerCredentials | None,
) -> int:
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
