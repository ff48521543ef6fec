"""Helpers for rollout tests on a real fleet: a second model, a broken variant, request load."""

from __future__ import annotations

import hashlib
import threading
import urllib.error
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from fleet_support import AgentProcess

from edgefleet.controller.config import ControllerConfig
from edgefleet.controller.policy import PolicyConfig
from edgefleet.controller.registry import VariantRecord
from edgefleet.controller.service import Controller
from edgefleet.protos.v1 import fleet_pb2


def rollout_config() -> ControllerConfig:
    """A fleet configuration whose rollout engine checks often and whose policy stays idle."""
    return ControllerConfig(
        telemetry_interval_s=0.5,
        host_calibration_duration_s=0.2,
        shutdown_grace_s=1.0,
        rollout_check_interval_s=0.2,
        policy=PolicyConfig(breach_samples=3, headroom_samples=1000, cooldown_s=0.0),
    )


def retrained_copy(onnx_path: Path, out_path: Path) -> Path:
    """Write a copy of the model with every float weight scaled by 1.001.

    It stands for a retrained version: the same architecture and accuracy, but other
    bytes, so it registers as a new model and its variants have new digests.
    """
    model = onnx.load(onnx_path)
    for initializer in model.graph.initializer:
        array = onnx.numpy_helper.to_array(initializer)
        if array.dtype == np.float32:
            initializer.CopyFrom(onnx.numpy_helper.from_array(array * 1.001, initializer.name))
    onnx.save(model, out_path)
    return out_path


def store_broken_variant(
    controller: Controller, model_id: str, profile_fingerprint: str, source_variant_id: str
) -> str:
    """Store a variant whose output is negated, off the ladder; returns its variant id.

    It models a broken export: the file loads and has the right shapes, but its output
    no longer matches the reference output in the manifest's self-test, so the agent
    rejects it before serving it.
    """
    registry = controller.registry
    source = registry.get_variant(model_id, profile_fingerprint, source_variant_id)
    model = onnx.load_from_string(controller.artifacts.path(source.sha256).read_bytes())
    output = model.graph.output[0].name
    for node in model.graph.node:
        for index, name in enumerate(node.output):
            if name == output:
                node.output[index] = f"{output}_before_neg"
    model.graph.node.append(onnx.helper.make_node("Neg", [f"{output}_before_neg"], [output]))
    data = model.SerializeToString()
    sha256 = hashlib.sha256(data).hexdigest()
    controller.artifacts.put_bytes(data, expected_sha256=sha256)

    manifest = fleet_pb2.VariantManifest.FromString(source.manifest)
    manifest.variant_id = sha256[:16]
    manifest.sha256 = sha256
    manifest.size_bytes = len(data)
    ladder = registry.ladder(model_id, profile_fingerprint)
    records = [_record(row, ladder_rank=row.ladder_rank) for row in ladder]
    records.append(
        VariantRecord(
            variant_id=manifest.variant_id,
            recipe_json=source.recipe_json,
            sha256=sha256,
            size_bytes=len(data),
            accuracy=source.accuracy,
            latency_p95_ms=source.latency_p95_ms,
            host_latency_p95_ms=source.host_latency_p95_ms,
            peak_memory_mb=source.peak_memory_mb,
            manifest=manifest.SerializeToString(),
            ladder_rank=None,
        )
    )
    registry.store_variants(model_id, profile_fingerprint, records, plan_id=None)
    return manifest.variant_id


def _record(row, *, ladder_rank: int | None) -> VariantRecord:
    return VariantRecord(
        variant_id=row.variant_id,
        recipe_json=row.recipe_json,
        sha256=row.sha256,
        size_bytes=row.size_bytes,
        accuracy=row.accuracy,
        latency_p95_ms=row.latency_p95_ms,
        host_latency_p95_ms=row.host_latency_p95_ms,
        peak_memory_mb=row.peak_memory_mb,
        manifest=row.manifest,
        ladder_rank=ladder_rank,
    )


class RequestLoad:
    """Sends inference requests to agents from a thread, so telemetry carries latency."""

    def __init__(self, agents: Sequence[AgentProcess], images: np.ndarray) -> None:
        self._agents = list(agents)
        self._images = images
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="request-load", daemon=True)
        self.served = 0

    def __enter__(self) -> RequestLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        index = 0
        while not self._stop.is_set():
            for agent in self._agents:
                try:
                    agent.infer(self._images[index % len(self._images)])
                    self.served += 1
                except (OSError, urllib.error.URLError):
                    # The agent returns 503 while it has no model; keep the load going.
                    pass
            index += 1
            self._stop.wait(0.02)
