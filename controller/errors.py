"""Exceptions raised by the controller.

Every error derives from ``ControllerError``. Errors about bad input are also
``edgefleet.errors.InvalidInputError``, and so ``ValueError``. The right column is the
status code that ``grpc_server`` returns where an RPC can raise the error::

    ControllerError (EdgefleetError)
    ├── ConfigError                  invalid controller or policy configuration
    ├── InvalidTelemetryError        a sample has a NaN, infinite or negative field
    ├── UnknownDeviceError           no device with that id is registered    FAILED_PRECONDITION
    ├── UnknownModelError            no model with that id is registered
    ├── UnknownVariantError          no such variant for the device's profile
    ├── ArtifactError                artifact store failures
    │   ├── ArtifactNotFoundError    no artifact with that digest            NOT_FOUND
    │   ├── ArtifactDigestError      content does not match the expected sha256
    │   └── ArtifactRangeError       offset beyond the end of an artifact    OUT_OF_RANGE
    ├── PlanningError                compressing a model for a profile failed
    ├── RolloutError                 rollout failures
    │   ├── InvalidRolloutError      bad target, waves, gates or variants
    │   ├── UnknownRolloutError      no rollout with that id
    │   ├── RolloutStateError        the rollout's state forbids the call
    │   └── RolloutConflictError     a target device is in another rollout
    ├── DatabaseError                the database is unreachable or cannot be migrated
    ├── RateLimitedError             over the configured connect rate        RESOURCE_EXHAUSTED
    ├── AuthenticationError          no valid, unrevoked device certificate  UNAUTHENTICATED
    │   └── IdentityMismatchError    the request names another device        PERMISSION_DENIED
    ├── EnrollmentError              invalid, used or expired token          PERMISSION_DENIED
    ├── ApiTokenError                HTTP API token failures
    │   ├── UnknownApiTokenError     no API token with that id
    │   ├── ApiTokenRevokedError     the API token is already revoked
    │   └── ApiTokenRejectedError    a request's bearer token is malformed, unknown or revoked
    └── ControllerStateError         the controller is not running           UNAVAILABLE

Other ``InvalidInputError``s raised in an RPC (device id, digest, profile) become
INVALID_ARGUMENT.
"""

from __future__ import annotations

from edgefleet.errors import EdgefleetError, InvalidInputError

__all__ = [
    "ApiTokenError",
    "ApiTokenRejectedError",
    "ApiTokenRevokedError",
    "ArtifactDigestError",
    "ArtifactError",
    "ArtifactNotFoundError",
    "ArtifactRangeError",
    "AuthenticationError",
    "ConfigError",
    "ControllerError",
    "ControllerStateError",
    "DatabaseError",
    "EnrollmentError",
    "IdentityMismatchError",
    "InvalidRolloutError",
    "InvalidTelemetryError",
    "PlanningError",
    "RateLimitedError",
    "RolloutConflictError",
    "RolloutError",
    "RolloutStateError",
    "UnknownApiTokenError",
    "UnknownDeviceError",
    "UnknownModelError",
    "UnknownRolloutError",
    "UnknownVariantError",
]


class ControllerError(EdgefleetError):
    """Base class of every error the controller raises on purpose."""


class ConfigError(ControllerError, InvalidInputError):
    """The controller or policy configuration is invalid; the message names the key."""


class InvalidTelemetryError(ControllerError, InvalidInputError):
    """A telemetry sample failed validation and must be dropped."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


class UnknownDeviceError(ControllerError, InvalidInputError):
    """No device with the given id is registered."""


class UnknownModelError(ControllerError, InvalidInputError):
    """No model with the given id is registered."""


class UnknownVariantError(ControllerError, InvalidInputError):
    """No variant with the given id exists for the device's profile and model."""


class ArtifactError(ControllerError):
    """The artifact store failed to store or read an artifact."""


class ArtifactNotFoundError(ArtifactError):
    """No artifact with the given digest is stored."""


class ArtifactDigestError(ArtifactError):
    """Artifact content does not match its expected sha256 digest."""


class ArtifactRangeError(ArtifactError, InvalidInputError):
    """A read offset lies beyond the end of the artifact."""


class PlanningError(ControllerError):
    """Compressing a model for a device profile failed."""


class RolloutError(ControllerError):
    """Base class of the errors of staged rollouts."""


class InvalidRolloutError(RolloutError, InvalidInputError):
    """A rollout request has an invalid target, wave list, gate setting or variant."""


class UnknownRolloutError(RolloutError, InvalidInputError):
    """No rollout with the given id exists."""


class RolloutStateError(RolloutError):
    """The rollout is in a state that forbids the call (resuming a finished one, say)."""


class RolloutConflictError(RolloutError):
    """A target device already belongs to another rollout that has not finished."""


class DatabaseError(ControllerError):
    """The database is unreachable, or migrating its schema to head failed."""


class RateLimitedError(ControllerError):
    """A new connection arrived faster than ``connect_rate_per_s`` allows; retry later."""


class ControllerStateError(ControllerError):
    """The controller is in a state that forbids the call (not started, or shut down)."""


class AuthenticationError(ControllerError):
    """A peer presented no device certificate, or one that is unknown or revoked."""


class IdentityMismatchError(AuthenticationError):
    """A request names a device other than the one its certificate was issued to."""


class EnrollmentError(ControllerError, InvalidInputError):
    """An enrollment token is unknown, used, expired or bound to another device.

    The message is the same in every case, so that a device learns nothing from it;
    ``detail`` names the case for the controller's log.
    """

    def __init__(self, message: str, *, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail or message


class ApiTokenError(ControllerError):
    """Base class of the errors of HTTP API tokens."""


class UnknownApiTokenError(ApiTokenError, InvalidInputError):
    """No HTTP API token with the given id exists."""


class ApiTokenRevokedError(ApiTokenError):
    """The HTTP API token was revoked before; revoking it again changes nothing."""


class ApiTokenRejectedError(ApiTokenError):
    """A request's bearer token is malformed, unknown, wrong or revoked.

    ``token_id`` is the id the token names, or None when it names none; the secret is
    never part of the error.
    """

    def __init__(self, message: str, *, token_id: str | None = None) -> None:
        super().__init__(message)
        self.token_id = token_id
