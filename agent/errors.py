"""Exceptions raised by the device agent.

gRPC, onnxruntime and operating-system errors are translated into this tree where they
enter the agent::

    AgentError
    ├── ArtifactError           the controller cannot provide an artifact, or it is missing
    │   └── CorruptArtifactError    a chunk or the whole file fails its CRC-32, size or sha256
    ├── StorageError            the state directory cannot be written (disk full, permissions)
    ├── ModelLoadError          onnxruntime rejected a model file, or it does not match its manifest
    ├── SelfTestError           a model loaded but its outputs differ from the manifest's self-test
    ├── InferenceInputError     an inference request has a missing, unknown or malformed input
    ├── NoModelError            an inference request arrived before any model was activated
    ├── RegistrationRejected    the controller rejected the registration or the session
    └── ControllerUnavailable   the controller cannot be reached for now (also a TransientError)

``InferenceInputError`` and ``RegistrationRejected`` are also ``InvalidInputError`` (and so
``ValueError``); ``ControllerUnavailable`` is a ``TransientError`` that the agent retries
with backoff.
"""

from __future__ import annotations

from edgefleet.errors import EdgefleetError, InvalidInputError, TransientError


class AgentError(EdgefleetError):
    """Base class of the errors the device agent raises."""


class ArtifactError(AgentError):
    """A downloaded artifact is missing, has the wrong size or fails its sha256 check."""


class CorruptArtifactError(ArtifactError):
    """A chunk or a downloaded file fails its CRC-32, size or sha256 check; fetch it again."""


class StorageError(AgentError):
    """The agent's state directory cannot be written, for example because the disk is full."""


class ModelLoadError(AgentError):
    """onnxruntime could not load a model file, or the model does not match its manifest."""


class SelfTestError(AgentError):
    """A model loaded but its self-test output is outside the manifest's tolerances."""


class InferenceInputError(AgentError, InvalidInputError):
    """An inference request names a missing or unknown input, or one of the wrong shape or type."""


class NoModelError(AgentError):
    """An inference request arrived before the agent activated any model."""


class RegistrationRejected(AgentError, InvalidInputError):
    """The controller rejected the registration or the session as invalid."""


class ControllerUnavailable(AgentError, TransientError):
    """The controller cannot be reached for now; the agent retries with backoff."""
