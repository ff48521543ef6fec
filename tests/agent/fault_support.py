"""Helpers for fault-injection tests: an agent that kills itself in a chosen update state,
signed manifests, and a TCP proxy that turns a connection half-open.

Run as a script, this module starts an agent whose update steps SIGKILL the process right
after the chosen state is written to disk, the way a power cut would stop the device::

    python fault_support.py CONFIG_JSON STATE
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.protos.v1 import fleet_pb2

HOUR_MS = 3_600_000


def sign_command(
    key: Ed25519PrivateKey,
    manifest: fleet_pb2.VariantManifest,
    *,
    device_id: str,
    deployment_id: str,
    version: int,
    issued_at_ms: int | None = None,
    expires_at_ms: int | None = None,
) -> fleet_pb2.DeployCommand:
    """Return a ``DeployCommand`` carrying ``manifest`` signed with ``key``."""
    from edgefleet.agent.trust import key_id_of

    issued = issued_at_ms if issued_at_ms is not None else int(time.time() * 1000)
    payload = fleet_pb2.ManifestPayload(
        variant=manifest,
        device_id=device_id,
        deployment_id=deployment_id,
        version=version,
        issued_at_ms=issued,
        expires_at_ms=expires_at_ms if expires_at_ms is not None else issued + HOUR_MS,
    )
    data = payload.SerializeToString()
    return fleet_pb2.DeployCommand(
        deployment_id=deployment_id,
        manifest=manifest,
        signed_manifest=fleet_pb2.SignedManifest(
            payload=data, key_id=key_id_of(key.public_key()), signature=key.sign(data)
        ),
    )


def build_slow_variant(
    *, features: int = 256, layers: int = 16
) -> tuple[bytes, fleet_pb2.VariantManifest]:
    """Return a model far slower than the affine test models, computing ``y = x``.

    ``layers`` identity MatMuls of ``features`` squared weights take about a thousand times
    the affine model's time, so a health check finds it slower whatever the host's load.
    """
    import hashlib

    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgefleet.agent.tensors import array_to_tensor

    weight = numpy_helper.from_array(np.eye(features, dtype=np.float32), "w")
    names = ["x", *[f"h{index}" for index in range(1, layers)], "y"]
    nodes = [helper.make_node("MatMul", [names[i], "w"], [names[i + 1]]) for i in range(layers)]
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", features])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    sha256 = hashlib.sha256(data).hexdigest()
    test_input = np.linspace(-1, 1, 2 * features, dtype=np.float32).reshape(2, features)
    spec = fleet_pb2.TensorSpec(name="x", type=fleet_pb2.TENSOR_TYPE_FLOAT32, shape=[-1, features])
    manifest = fleet_pb2.VariantManifest(
        variant_id=f"slow-{sha256[:10]}",
        model_id="slow",
        recipe_json="[]",
        sha256=sha256,
        size_bytes=len(data),
        inputs=[spec],
        outputs=[fleet_pb2.TensorSpec(name="y", type=spec.type, shape=spec.shape)],
        self_test=fleet_pb2.SelfTest(
            input=array_to_tensor(test_input),
            expected_output=array_to_tensor(test_input),
            rtol=1e-5,
            atol=1e-6,
        ),
        opset=13,
    )
    return data, manifest


def trust_key(state_dir: Path, key: Ed25519PrivateKey) -> None:
    """Make the agent in ``state_dir`` trust ``key`` for manifests, as enrollment does."""
    from edgefleet.agent.trust import write_trusted_key

    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    write_trusted_key(state_dir, raw)


class BlackholeProxy:
    """A TCP proxy on loopback whose ``cut`` drops all traffic and refuses connections."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream = ("127.0.0.1", upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._cut = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def cut(self) -> None:
        self._cut.set()

    def restore(self) -> None:
        # The far end gave up on the old connections long ago, so they end now.
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            sock.close()
        self._cut.clear()

    def _accept(self) -> None:
        while True:
            client, _ = self._listener.accept()
            if self._cut.is_set():
                client.close()
                continue
            upstream = socket.create_connection(self._upstream)
            with self._lock:
                self._sockets += [client, upstream]
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                if not self._cut.is_set():
                    target.sendall(data)
        except OSError:
            pass  # closed by restore() or by the other side
        finally:
            source.close()
            target.close()


def _run_until_killed(config_path: str, state_name: str) -> None:
    from edgefleet.agent import deploy
    from edgefleet.agent.daemon import Agent, AgentConfig
    from edgefleet.agent.update import UpdateState
    from edgefleet.profiles import parse_profile

    target = UpdateState(state_name)
    original_enter = deploy._Update.enter

    def enter_then_die(self, state, message=""):
        original_enter(self, state, message)
        if state is target:
            os.kill(os.getpid(), signal.SIGKILL)

    deploy._Update.enter = enter_then_die  # type: ignore[method-assign]
    original_commit = deploy._Update.commit

    def commit_then_die(self):
        # ACTIVE is written together with the committed model, inside commit().
        original_commit(self)
        if target is UpdateState.ACTIVE:
            os.kill(os.getpid(), signal.SIGKILL)

    deploy._Update.commit = commit_then_die  # type: ignore[method-assign]

    settings = json.loads(Path(config_path).read_text())
    settings["profile"] = parse_profile(settings["profile"])
    Agent(AgentConfig(**settings)).run()


if __name__ == "__main__":
    _run_until_killed(sys.argv[1], sys.argv[2])
