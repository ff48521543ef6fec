"""Request handling that both endpoints share: registration and artifact reads.

Each function validates an ``edgefleet.v1`` request, calls the ``Controller`` and returns
the reply message, raising controller errors that the endpoint maps to its own status:
gRPC status codes in ``grpc_server``, the same code names as MQTT 5 user properties in
``mqtt_endpoint`` (see ``status_name``).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgefleet.controller.calibration import DeviceCalibration, parse_calibration
from edgefleet.controller.errors import (
    ArtifactNotFoundError,
    ArtifactRangeError,
    AuthenticationError,
    ControllerStateError,
    IdentityMismatchError,
    RateLimitedError,
    UnknownDeviceError,
)
from edgefleet.errors import InvalidInputError
from edgefleet.ids import validate_device_id, validate_sha256
from edgefleet.profiles import DeviceProfile
from edgefleet.protos.limits import ARTIFACT_CHUNK_BYTES
from edgefleet.protos.v1 import fleet_pb2

if TYPE_CHECKING:
    from edgefleet.controller.service import Controller

__all__ = [
    "RegistrationRequest",
    "open_artifact",
    "read_artifact_chunk",
    "register_device",
    "register_devices",
    "status_name",
]


@dataclass(frozen=True, slots=True)
class RegistrationRequest:
    """A validated registration, the input of ``Controller.register_devices``."""

    device_id: str
    profile: DeviceProfile
    calibration: DeviceCalibration | None = None
    agent_version: str = ""
    onnxruntime_version: str = ""
    current_variant_id: str = ""


def register_device(
    controller: Controller, request: fleet_pb2.RegisterRequest
) -> fleet_pb2.RegisterResponse:
    """Register the device of ``request``; raises ``InvalidInputError`` naming the bad field.

    The endpoint calls ``Controller.admit_connection`` first, when the request arrives.
    """
    registration = _validate_registration(request)
    controller.register_device(
        registration.device_id,
        registration.profile,
        calibration=registration.calibration,
        agent_version=registration.agent_version,
        onnxruntime_version=registration.onnxruntime_version,
        current_variant_id=registration.current_variant_id,
    )
    return _registered(controller, registration)


def register_devices(
    controller: Controller, requests: Sequence[fleet_pb2.RegisterRequest]
) -> list[fleet_pb2.RegisterResponse | InvalidInputError | AuthenticationError]:
    """Register every valid device of ``requests`` in one transaction.

    Returns, in order, the reply to each request or the error that rejected it:
    ``InvalidInputError`` naming the bad field, ``AuthenticationError`` for a revoked
    device. A failed transaction raises.
    """
    results: list[fleet_pb2.RegisterResponse | InvalidInputError | AuthenticationError] = []
    valid: list[tuple[int, RegistrationRequest]] = []
    for request in requests:
        try:
            valid.append((len(results), _validate_registration(request)))
            results.append(fleet_pb2.RegisterResponse())
        except InvalidInputError as exc:
            results.append(exc)
    outcomes = controller.register_devices([registration for _index, registration in valid])
    for (index, registration), outcome in zip(valid, outcomes, strict=True):
        if isinstance(outcome, AuthenticationError):
            results[index] = outcome
        else:
            results[index] = _registered(controller, registration)
    return results


def _validate_registration(request: fleet_pb2.RegisterRequest) -> RegistrationRequest:
    device_id = validate_device_id(request.device_id)
    if not request.HasField("profile"):
        raise InvalidInputError("profile is required")
    profile = DeviceProfile.from_proto(request.profile)
    calibration = (
        parse_calibration(request.calibration) if request.HasField("calibration") else None
    )
    return RegistrationRequest(
        device_id=device_id,
        profile=profile,
        calibration=calibration,
        agent_version=request.agent_version,
        onnxruntime_version=request.onnxruntime_version,
        current_variant_id=request.current_variant_id,
    )


def _registered(
    controller: Controller, registration: RegistrationRequest
) -> fleet_pb2.RegisterResponse:
    return fleet_pb2.RegisterResponse(
        device_id=registration.device_id,
        telemetry_interval_s=controller.config.telemetry_interval_s,
        profile_fingerprint=registration.profile.fingerprint,
        controller_time_ms=int(time.time() * 1000),
    )


def open_artifact(
    controller: Controller, request: fleet_pb2.ArtifactRequest
) -> tuple[int, Iterator[tuple[int, bytes]]]:
    """Return the artifact's size and its ``(offset, data)`` chunks from ``request.offset``.

    The chunk size is the requested one, capped at ``ARTIFACT_CHUNK_BYTES`` so that every
    chunk message stays well under the 4 MiB message limit.
    """
    chunk_size = min(request.chunk_size or ARTIFACT_CHUNK_BYTES, ARTIFACT_CHUNK_BYTES)
    validate_device_id(request.device_id)
    validate_sha256(request.sha256)
    # Only the device's existence matters here: a column query, not a full row with its
    # profile JSON, because a deployment to a fleet reads thousands of chunks.
    if not controller.registry.existing_device_ids({request.device_id}):
        raise UnknownDeviceError(f"device {request.device_id!r} is not registered; register first")
    store = controller.artifacts
    total = store.info(request.sha256).size_bytes
    chunks = store.read_chunks(request.sha256, offset=request.offset, chunk_size=chunk_size)
    return total, chunks


def read_artifact_chunk(
    controller: Controller, request: fleet_pb2.ArtifactRequest
) -> fleet_pb2.ArtifactChunk:
    """Return the one chunk at ``request.offset``, with its CRC-32; empty at the end."""
    total, chunks = open_artifact(controller, request)
    try:
        offset, data = next(chunks, (total, b""))
    finally:
        chunks.close()  # type: ignore[attr-defined]  # a generator: closes the file
    return fleet_pb2.ArtifactChunk(
        sha256=request.sha256,
        offset=offset,
        total_size=total,
        data=data,
        crc32=zlib.crc32(data),
    )


def status_name(error: Exception) -> str:
    """Return the gRPC status code name that stands for ``error`` on the wire."""
    if isinstance(error, IdentityMismatchError):
        return "PERMISSION_DENIED"
    if isinstance(error, AuthenticationError):
        return "UNAUTHENTICATED"
    if isinstance(error, UnknownDeviceError):
        return "FAILED_PRECONDITION"
    if isinstance(error, ArtifactNotFoundError):
        return "NOT_FOUND"
    if isinstance(error, ArtifactRangeError):
        return "OUT_OF_RANGE"
    if isinstance(error, InvalidInputError):
        return "INVALID_ARGUMENT"
    if isinstance(error, RateLimitedError):
        return "RESOURCE_EXHAUSTED"
    if isinstance(error, ControllerStateError):
        return "UNAVAILABLE"
    return "INTERNAL"
