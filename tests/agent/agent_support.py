"""Helpers for the agent tests: tiny ONNX models and a small FleetService on loopback.

The FleetService here is a real gRPC server with just enough behaviour to drive the agent:
it records registrations and session messages, sends the commands a test queues, and
streams artifacts from memory.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures

import grpc
import numpy as np
import pytest

from edgefleet.agent.tensors import array_to_tensor
from edgefleet.errors import ProfileError
from edgefleet.profiles import DeviceProfile
from edgefleet.protos.limits import ARTIFACT_CHUNK_BYTES, SERVER_OPTIONS
from edgefleet.protos.v1 import fleet_pb2, fleet_pb2_grpc


def build_affine_model(scale: float, bias: float, *, features: int = 4) -> bytes:
    """Return an ONNX model computing ``y = x * scale + bias`` on float32 [N, features]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "scale"], ["scaled"]),
            helper.make_node("Add", ["scaled", "bias"], ["y"]),
        ],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", features])],
        initializer=[
            numpy_helper.from_array(np.array(scale, dtype=np.float32), "scale"),
            numpy_helper.from_array(np.array(bias, dtype=np.float32), "bias"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model.SerializeToString()


def build_manifest(
    data: bytes,
    *,
    scale: float,
    bias: float,
    features: int = 4,
    variant_id: str | None = None,
    expected_shift: float = 0.0,
) -> fleet_pb2.VariantManifest:
    """Return the manifest of an affine model; ``expected_shift`` breaks its self-test."""
    sha256 = hashlib.sha256(data).hexdigest()
    test_input = np.linspace(-1, 1, 2 * features, dtype=np.float32).reshape(2, features)
    expected = test_input * np.float32(scale) + np.float32(bias) + np.float32(expected_shift)
    spec = fleet_pb2.TensorSpec(name="x", type=fleet_pb2.TENSOR_TYPE_FLOAT32, shape=[-1, features])
    out = fleet_pb2.TensorSpec(name="y", type=fleet_pb2.TENSOR_TYPE_FLOAT32, shape=[-1, features])
    return fleet_pb2.VariantManifest(
        variant_id=variant_id or sha256[:16],
        model_id="affine",
        recipe_json="[]",
        sha256=sha256,
        size_bytes=len(data),
        inputs=[spec],
        outputs=[out],
        self_test=fleet_pb2.SelfTest(
            input=array_to_tensor(test_input),
            expected_output=array_to_tensor(expected),
            rtol=1e-5,
            atol=1e-6,
        ),
        opset=13,
    )


def wait_for(
    predicate: Callable[[], object], *, timeout_s: float = 10.0, description: str = ""
) -> None:
    """Poll ``predicate`` every 20 ms until it is true; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {description or predicate}")
        time.sleep(0.02)


class FleetServicer(fleet_pb2_grpc.FleetServiceServicer):
    """Records what agents send and replays what tests queue."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.registrations: list[fleet_pb2.RegisterRequest] = []
        self.messages: list[fleet_pb2.AgentMessage] = []
        self.artifacts: dict[str, bytes] = {}
        self.download_requests: list[fleet_pb2.ArtifactRequest] = []
        self.telemetry_interval_s = 0.2
        # Abort the next download after streaming this many bytes, to test resumption.
        self.drop_after_bytes: int | None = None
        # Acknowledge each telemetry sample with a SessionAck, as the controller does.
        self.send_receipts = True
        self._sessions: list[queue.Queue[fleet_pb2.ControllerMessage]] = []

    # -- helpers for tests ---------------------------------------------------------------

    def of_kind(self, kind: str) -> list:
        with self.lock:
            return [getattr(m, kind) for m in self.messages if m.WhichOneof("body") == kind]

    def statuses(self, deployment_id: str) -> list[int]:
        return [s.state for s in self.of_kind("status") if s.deployment_id == deployment_id]

    @property
    def open_sessions(self) -> int:
        with self.lock:
            return len(self._sessions)

    def send(self, command: fleet_pb2.Command) -> None:
        with self.lock:
            for commands in self._sessions:
                commands.put(fleet_pb2.ControllerMessage(command=command))

    # -- FleetService --------------------------------------------------------------------

    def Register(self, request, context):
        try:
            profile = DeviceProfile.from_proto(request.profile)
        except ProfileError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        with self.lock:
            self.registrations.append(request)
        return fleet_pb2.RegisterResponse(
            device_id=request.device_id,
            telemetry_interval_s=self.telemetry_interval_s,
            profile_fingerprint=profile.fingerprint,
            controller_time_ms=int(time.time() * 1000),
        )

    def Session(self, request_iterator, context):
        commands: queue.Queue[fleet_pb2.ControllerMessage] = queue.Queue()
        reader = threading.Thread(target=self._read, args=(request_iterator, commands), daemon=True)
        reader.start()
        with self.lock:
            self._sessions.append(commands)
        try:
            while context.is_active():
                try:
                    reply = commands.get(timeout=0.05)
                except queue.Empty:
                    continue
                yield reply
        finally:
            with self.lock:
                self._sessions.remove(commands)

    def _read(
        self,
        request_iterator: Iterator[fleet_pb2.AgentMessage],
        replies: queue.Queue[fleet_pb2.ControllerMessage],
    ) -> None:
        try:
            for message in request_iterator:
                with self.lock:
                    self.messages.append(message)
                if message.HasField("telemetry") and self.send_receipts:
                    receipt = fleet_pb2.SessionAck(
                        telemetry_seq=message.telemetry.seq,
                        controller_time_ms=int(time.time() * 1000),
                    )
                    replies.put(fleet_pb2.ControllerMessage(ack=receipt))
        except grpc.RpcError:
            pass  # the session ended

    def DownloadArtifact(self, request, context):
        with self.lock:
            self.download_requests.append(request)
            data = self.artifacts.get(request.sha256)
        if data is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown artifact {request.sha256}")
        if request.offset > len(data):
            context.abort(grpc.StatusCode.OUT_OF_RANGE, f"offset {request.offset} > {len(data)}")
        chunk = min(request.chunk_size or ARTIFACT_CHUNK_BYTES, ARTIFACT_CHUNK_BYTES)
        for start in range(request.offset, len(data), chunk):
            if (
                self.drop_after_bytes is not None
                and start - request.offset >= self.drop_after_bytes
            ):
                self.drop_after_bytes = None
                context.abort(grpc.StatusCode.UNAVAILABLE, "connection dropped by the test")
            yield fleet_pb2.ArtifactChunk(
                sha256=request.sha256,
                offset=start,
                total_size=len(data),
                data=data[start : start + chunk],
            )


class FleetServer:
    """A ``FleetServicer`` on 127.0.0.1 that can stop and restart on the same port."""

    def __init__(self) -> None:
        self.servicer = FleetServicer()
        self.port = 0
        self._server: grpc.Server | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=SERVER_OPTIONS)
        fleet_pb2_grpc.add_FleetServiceServicer_to_server(self.servicer, server)
        self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        server.start()
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait()
            self._server = None
