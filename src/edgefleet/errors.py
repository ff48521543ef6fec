"""Exceptions shared by every edgefleet package.

Each package derives its own small tree from these, and translates third-party errors
(gRPC, onnxruntime, torch, SQLAlchemy) into them where they enter::

    EdgefleetError
    ├── InvalidInputError       a value from a user, a file or a peer failed validation
    │   └── ProfileError        a device profile is invalid; the message names the field
    └── TransientError          a peer or resource is unavailable for now; retry with backoff

``InvalidInputError`` is also a ``ValueError``, so callers that only know the standard
library can still catch it.
"""

from __future__ import annotations


class EdgefleetError(Exception):
    """Base class of every error edgefleet raises on purpose."""


class InvalidInputError(EdgefleetError, ValueError):
    """A value from a user, a file or a peer failed validation."""


class ProfileError(InvalidInputError):
    """A device profile is invalid."""


class TransientError(EdgefleetError):
    """A peer or resource is unavailable for now; the operation may succeed on retry."""
