"""The device agent: serves an ONNX model locally and keeps it in sync with the controller.

It never imports torch or onnx; its dependencies are numpy, onnxruntime, grpcio, protobuf,
psutil and typer. ``edgefleet agent run`` starts it (``edgefleet.agent.cli``).

The names below load on first use (PEP 562), so importing ``edgefleet.agent.cli`` for the
command line does not pull in onnxruntime and gRPC before the agent actually runs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgefleet.agent.backoff import Backoff
    from edgefleet.agent.calibration import measure_reference, reference_sha256
    from edgefleet.agent.daemon import Agent, AgentConfig
    from edgefleet.agent.deploy import Deployer
    from edgefleet.agent.download import fetch_artifact, verify_artifact
    from edgefleet.agent.enroll import EnrollmentFailed, enroll
    from edgefleet.agent.errors import (
        AgentError,
        ArtifactError,
        ControllerUnavailable,
        InferenceInputError,
        ModelLoadError,
        NoModelError,
        RegistrationRejected,
        SelfTestError,
        StorageError,
    )
    from edgefleet.agent.identity import DeviceIdentity
    from edgefleet.agent.latency import LatencyRecorder, LatencyWindow
    from edgefleet.agent.runtime import InferenceResult, LoadedModel, ModelRuntime
    from edgefleet.agent.server import InferenceServer
    from edgefleet.agent.store import AgentState, AgentStore, UpdateRecord
    from edgefleet.agent.telemetry import TelemetrySampler
    from edgefleet.agent.tensors import array_to_tensor, tensor_to_array
    from edgefleet.agent.transport import ControllerClient
    from edgefleet.agent.trust import (
        Manifest,
        ManifestRejected,
        RejectReason,
        load_trusted_keys,
        verify_manifest,
    )
    from edgefleet.agent.update import UpdateEvent, UpdateState

__all__ = [
    "Agent",
    "AgentConfig",
    "AgentError",
    "AgentState",
    "AgentStore",
    "ArtifactError",
    "Backoff",
    "ControllerClient",
    "ControllerUnavailable",
    "Deployer",
    "DeviceIdentity",
    "EnrollmentFailed",
    "InferenceInputError",
    "InferenceResult",
    "InferenceServer",
    "LatencyRecorder",
    "LatencyWindow",
    "LoadedModel",
    "Manifest",
    "ManifestRejected",
    "ModelLoadError",
    "ModelRuntime",
    "NoModelError",
    "RegistrationRejected",
    "RejectReason",
    "SelfTestError",
    "StorageError",
    "TelemetrySampler",
    "UpdateEvent",
    "UpdateRecord",
    "UpdateState",
    "array_to_tensor",
    "enroll",
    "fetch_artifact",
    "load_trusted_keys",
    "measure_reference",
    "reference_sha256",
    "tensor_to_array",
    "verify_artifact",
    "verify_manifest",
]

# Exported name -> module of edgefleet.agent that defines it.
_MODULE_OF = {
    "Agent": "daemon",
    "AgentConfig": "daemon",
    "AgentError": "errors",
    "AgentState": "store",
    "AgentStore": "store",
    "ArtifactError": "errors",
    "Backoff": "backoff",
    "ControllerClient": "transport",
    "ControllerUnavailable": "errors",
    "Deployer": "deploy",
    "DeviceIdentity": "identity",
    "EnrollmentFailed": "enroll",
    "InferenceInputError": "errors",
    "InferenceResult": "runtime",
    "InferenceServer": "server",
    "LatencyRecorder": "latency",
    "LatencyWindow": "latency",
    "LoadedModel": "runtime",
    "Manifest": "trust",
    "ManifestRejected": "trust",
    "ModelLoadError": "errors",
    "ModelRuntime": "runtime",
    "NoModelError": "errors",
    "RegistrationRejected": "errors",
    "RejectReason": "trust",
    "SelfTestError": "errors",
    "StorageError": "errors",
    "TelemetrySampler": "telemetry",
    "UpdateEvent": "update",
    "UpdateRecord": "store",
    "UpdateState": "update",
    "array_to_tensor": "tensors",
    "enroll": "enroll",
    "fetch_artifact": "download",
    "load_trusted_keys": "trust",
    "measure_reference": "calibration",
    "reference_sha256": "calibration",
    "tensor_to_array": "tensors",
    "verify_artifact": "download",
    "verify_manifest": "trust",
}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
