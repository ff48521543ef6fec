"""Helpers shared by the controller tests: sample builders and a fake ladder."""

from __future__ import annotations

import hashlib
import queue
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from edgefleet.controller.models import ModelRow, PlanState
from edgefleet.controller.registry import VariantRecord
from edgefleet.controller.service import Controller
from edgefleet.controller.telemetry import TelemetryRecord
from edgefleet.profiles import DeviceProfile
from edgefleet.protos.v1 import fleet_pb2

# Database backends for ``pytest.mark.parametrize("database_url", BACKENDS, indirect=True)``.
BACKENDS = ["sqlite", "postgresql"]

PROFILE_FIELDS = {
    "name": "test-board",
    "cpu_arch": "aarch64",
    "cpu_cores": 4,
    "cpu_flags": ["neon", "asimd"],
    "memory_mb": 1024,
    "model_memory_budget_mb": 128,
    "latency_budget_ms": 20.0,
    "inference_threads": 1,
}


def make_record(
    *,
    at: float,
    p95_ms: float = 5.0,
    requests: int = 10,
    memory_available_mb: float = 500.0,
    variant_id: str = "v0",
    device_id: str = "dev-1",
) -> TelemetryRecord:
    """Build a validated sample received ``at`` seconds after the Unix epoch."""
    when = datetime.fromtimestamp(at, UTC)
    return TelemetryRecord(
        device_id=device_id,
        seq=int(at),
        sampled_at=when,
        received_at=when,
        variant_id=variant_id,
        cpu_percent=10.0,
        memory_total_mb=1024.0,
        memory_available_mb=memory_available_mb,
        load_1m=0.5,
        load_5m=0.5,
        load_15m=0.5,
        disk_free_mb=1000.0,
        temperature_c=45.0,
        agent_rss_mb=50.0,
        requests=requests,
        latency_p50_ms=p95_ms / 2,
        latency_p95_ms=p95_ms,
        latency_p99_ms=p95_ms * 1.2,
        throughput_rps=requests / 1.0,
        window_s=1.0,
    )


def make_sample(device_id: str = "dev-1", **overrides: object) -> fleet_pb2.TelemetrySample:
    fields: dict[str, object] = {
        "device_id": device_id,
        "seq": 1,
        "sampled_at_ms": 1_700_000_000_000,
        "cpu_percent": 12.5,
        "memory_total_mb": 1024.0,
        "memory_available_mb": 600.0,
        "load_1m": 0.3,
        "load_5m": 0.2,
        "load_15m": 0.1,
        "disk_free_mb": 2048.0,
        "agent_rss_mb": 40.0,
        "variant_id": "",
        "requests": 5,
        "latency_p50_ms": 2.0,
        "latency_p95_ms": 3.0,
        "latency_p99_ms": 4.0,
        "throughput_rps": 5.0,
        "window_s": 1.0,
    }
    fields.update(overrides)
    return fleet_pb2.TelemetrySample(**fields)


def store_fake_ladder(
    controller: Controller,
    profile: DeviceProfile,
    *,
    host_latencies_ms: tuple[float, ...] = (10.0, 5.0, 2.0),
) -> tuple[ModelRow, list[str]]:
    """Register a model row and a ladder of small fake artifacts, without compressing.

    Returns the model and the ladder's variant ids, most accurate first.
    """
    registry = controller.registry
    model = registry.register_model(
        name="fake", digest="f" * 64, source="fake.onnx", data_path="fake.npz", weights_path=None
    )
    # The profile row must exist before variants reference it.
    registry.register_device("ladder-owner", profile)
    records = []
    for rank, latency in enumerate(host_latencies_ms):
        data = f"variant {rank} of the fake model".encode() * 100
        sha256 = hashlib.sha256(data).hexdigest()
        controller.artifacts.put_bytes(data, expected_sha256=sha256)
        variant_id = sha256[:16]
        manifest = fleet_pb2.VariantManifest(
            variant_id=variant_id, model_id=model.id, sha256=sha256, size_bytes=len(data)
        )
        records.append(
            VariantRecord(
                variant_id=variant_id,
                recipe_json="[]",
                sha256=sha256,
                size_bytes=len(data),
                accuracy=0.9 - 0.1 * rank,
                latency_p95_ms=latency,
                host_latency_p95_ms=latency,
                peak_memory_mb=50.0 - 10 * rank,
                manifest=manifest.SerializeToString(),
                ladder_rank=rank,
            )
        )
    plan = registry.create_plan(model.id, profile.fingerprint, latency_scale=1.0)
    registry.store_variants(model.id, profile.fingerprint, records, plan_id=plan.id)
    registry.update_plan(plan.id, state=PlanState.DONE, reason="fake ladder")
    registry.delete_device("ladder-owner")
    return model, [record.variant_id for record in records]


class AgentStream:
    """A Session stream driven by hand: ``send`` agent messages, read ``responses``.

    ``responses`` yields commands only; telemetry receipts are collected in ``receipts``.
    """

    def __init__(self, stub: object, *, timeout_s: float = 30.0) -> None:
        self._outgoing: queue.Queue[fleet_pb2.AgentMessage | None] = queue.Queue()
        self.call = stub.Session(self._requests(), timeout=timeout_s)  # type: ignore[attr-defined]
        self.receipts: list[int] = []
        self.responses = self._commands()

    def _commands(self) -> Iterator[fleet_pb2.ControllerMessage]:
        for message in self.call:
            if message.HasField("ack"):
                self.receipts.append(message.ack.telemetry_seq)
            else:
                yield message

    def _requests(self) -> Iterator[fleet_pb2.AgentMessage]:
        while (message := self._outgoing.get()) is not None:
            yield message

    def send(self, message: fleet_pb2.AgentMessage) -> None:
        self._outgoing.put(message)

    def hello(self, device_id: str, current_variant_id: str = "") -> None:
        self.send(
            fleet_pb2.AgentMessage(
                hello=fleet_pb2.SessionHello(
                    device_id=device_id, current_variant_id=current_variant_id
                )
            )
        )

    def close(self) -> None:
        self._outgoing.put(None)
        self.call.cancel()


def wait_for(condition: Callable[[], object], *, timeout_s: float = 10.0) -> None:
    """Poll ``condition`` until it is truthy; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"condition not met within {timeout_s} s")
