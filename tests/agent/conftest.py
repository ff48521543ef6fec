"""Fixtures for the agent tests; the helpers behind them live in ``agent_support``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from agent_support import FleetServer, build_affine_model, build_manifest

from edgefleet.profiles import DeviceProfile, parse_profile
from edgefleet.protos.v1 import fleet_pb2

VariantFactory = Callable[..., tuple[Path, fleet_pb2.VariantManifest]]


@pytest.fixture
def affine_variant(tmp_path: Path) -> VariantFactory:
    """Factory writing an affine model to ``tmp_path``; returns its path and manifest."""

    def make(
        scale: float = 2.0, bias: float = 1.0, **manifest_args
    ) -> tuple[Path, fleet_pb2.VariantManifest]:
        data = build_affine_model(scale, bias)
        manifest = build_manifest(data, scale=scale, bias=bias, **manifest_args)
        path = tmp_path / f"{manifest.sha256}.onnx"
        path.write_bytes(data)
        return path, manifest

    return make


@pytest.fixture
def profile() -> DeviceProfile:
    return parse_profile(
        {
            "name": "test-board",
            "cpu_arch": "x86_64",
            "cpu_cores": 2,
            "cpu_flags": ["avx2"],
            "memory_mb": 1024,
            "model_memory_budget_mb": 128,
            "latency_budget_ms": 50.0,
            "inference_threads": 1,
        }
    )


@pytest.fixture
def fleet() -> Iterator[FleetServer]:
    server = FleetServer()
    server.start()
    yield server
    server.stop()
