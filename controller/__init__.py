"""The edgefleet controller: registry, gRPC endpoint, planner, policy and rollout engines.

Names are imported on first use (PEP 562), so ``import edgefleet.controller.cli`` stays
light: the ``edgefleet`` command must start without loading SQLAlchemy, gRPC or torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgefleet.controller.artifacts import ArtifactInfo, ArtifactStore
    from edgefleet.controller.config import ControllerConfig, load_config
    from edgefleet.controller.db import Database, open_database
    from edgefleet.controller.errors import (
        ArtifactDigestError,
        ArtifactError,
        ArtifactNotFoundError,
        ArtifactRangeError,
        AuthenticationError,
        ConfigError,
        ControllerError,
        ControllerStateError,
        DatabaseError,
        EnrollmentError,
        IdentityMismatchError,
        InvalidRolloutError,
        InvalidTelemetryError,
        PlanningError,
        RateLimitedError,
        RolloutConflictError,
        RolloutError,
        RolloutStateError,
        UnknownDeviceError,
        UnknownModelError,
        UnknownRolloutError,
        UnknownVariantError,
    )
    from edgefleet.controller.grpc_server import FleetServicer, create_server
    from edgefleet.controller.models import (
        DeploymentState,
        DeviceState,
        EventKind,
        PlanState,
        RolloutDeviceState,
        RolloutState,
        WaveState,
    )
    from edgefleet.controller.policy import (
        Decision,
        DeviceView,
        PolicyAction,
        PolicyConfig,
        Rung,
        evaluate,
    )
    from edgefleet.controller.registry import Registry, VariantRecord
    from edgefleet.controller.rollout_spec import GateConfig, Target, Wave
    from edgefleet.controller.rollouts import Rollout, RolloutDevice, RolloutManager, RolloutWave
    from edgefleet.controller.service import Controller, ControllerState
    from edgefleet.controller.signing import ManifestSigner
    from edgefleet.controller.telemetry import TelemetryRecord, validate_sample
    from edgefleet.controller.trust import ControllerTrust

__all__ = [
    "ArtifactDigestError",
    "ArtifactError",
    "ArtifactInfo",
    "ArtifactNotFoundError",
    "ArtifactRangeError",
    "ArtifactStore",
    "AuthenticationError",
    "ConfigError",
    "Controller",
    "ControllerConfig",
    "ControllerError",
    "ControllerState",
    "ControllerStateError",
    "ControllerTrust",
    "Database",
    "DatabaseError",
    "Decision",
    "DeploymentState",
    "DeviceState",
    "DeviceView",
    "EnrollmentError",
    "EventKind",
    "FleetServicer",
    "GateConfig",
    "IdentityMismatchError",
    "InvalidRolloutError",
    "InvalidTelemetryError",
    "ManifestSigner",
    "PlanState",
    "PlanningError",
    "PolicyAction",
    "PolicyConfig",
    "RateLimitedError",
    "Registry",
    "Rollout",
    "RolloutConflictError",
    "RolloutDevice",
    "RolloutDeviceState",
    "RolloutError",
    "RolloutManager",
    "RolloutState",
    "RolloutStateError",
    "RolloutWave",
    "Rung",
    "Target",
    "TelemetryRecord",
    "UnknownDeviceError",
    "UnknownModelError",
    "UnknownRolloutError",
    "UnknownVariantError",
    "VariantRecord",
    "Wave",
    "WaveState",
    "create_server",
    "evaluate",
    "load_config",
    "open_database",
    "validate_sample",
]

# Module of each exported name, imported on first use.
_EXPORTS = {
    "ArtifactDigestError": "errors",
    "ArtifactError": "errors",
    "ArtifactInfo": "artifacts",
    "ArtifactNotFoundError": "errors",
    "ArtifactRangeError": "errors",
    "ArtifactStore": "artifacts",
    "AuthenticationError": "errors",
    "ConfigError": "errors",
    "Controller": "service",
    "ControllerConfig": "config",
    "ControllerError": "errors",
    "ControllerState": "service",
    "ControllerStateError": "errors",
    "ControllerTrust": "trust",
    "Database": "db",
    "DatabaseError": "errors",
    "Decision": "policy",
    "DeploymentState": "models",
    "DeviceState": "models",
    "DeviceView": "policy",
    "EnrollmentError": "errors",
    "EventKind": "models",
    "FleetServicer": "grpc_server",
    "GateConfig": "rollout_spec",
    "InvalidRolloutError": "errors",
    "IdentityMismatchError": "errors",
    "InvalidTelemetryError": "errors",
    "ManifestSigner": "signing",
    "PlanState": "models",
    "PlanningError": "errors",
    "PolicyAction": "policy",
    "PolicyConfig": "policy",
    "RateLimitedError": "errors",
    "Registry": "registry",
    "Rollout": "rollouts",
    "RolloutConflictError": "errors",
    "RolloutDevice": "rollouts",
    "RolloutDeviceState": "models",
    "RolloutError": "errors",
    "RolloutManager": "rollouts",
    "RolloutState": "models",
    "RolloutStateError": "errors",
    "RolloutWave": "rollouts",
    "Rung": "policy",
    "Target": "rollout_spec",
    "TelemetryRecord": "telemetry",
    "UnknownDeviceError": "errors",
    "UnknownModelError": "errors",
    "UnknownRolloutError": "errors",
    "UnknownVariantError": "errors",
    "VariantRecord": "registry",
    "Wave": "rollout_spec",
    "WaveState": "models",
    "create_server": "grpc_server",
    "evaluate": "policy",
    "load_config": "config",
    "open_database": "db",
    "validate_sample": "telemetry",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
