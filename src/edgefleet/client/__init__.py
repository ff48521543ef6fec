"""Operator access to a running controller over its HTTP API.

``ControllerClient`` (in ``edgefleet.client.http``) wraps the ``/api/v1`` endpoints and
``edgefleet.client.commands`` builds the ``edgefleet devices``, ``deploy``, ``rollouts``
and other operator commands on it. Names are imported on first use (PEP 562), so that
importing the commands does not load httpx or rich before a command runs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgefleet.client.http import (
        ApiResponseError,
        ClientError,
        ControllerClient,
        ControllerUnreachableError,
    )

__all__ = [
    "DEFAULT_CONTROLLER_URL",
    "ApiResponseError",
    "ClientError",
    "ControllerClient",
    "ControllerUnreachableError",
]

# The HTTP API is off unless the controller is started with --http-port; this is the port
# the README's examples use. EDGEFLEET_CONTROLLER_URL or --controller-url override it.
DEFAULT_CONTROLLER_URL = "http://127.0.0.1:8080"

_EXPORTS = {
    "ApiResponseError": "http",
    "ClientError": "http",
    "ControllerClient": "http",
    "ControllerUnreachableError": "http",
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
