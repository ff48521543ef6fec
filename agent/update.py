"""The update state machine: how one deployment moves from PENDING to ACTIVE or FAILED.

The states mirror ``edgefleet.v1.DeploymentState``, and ``TRANSITIONS`` is the whole flow.
``next_state`` raises on any (state, event) pair that is not in it. A step that runs out
of order therefore fails loudly instead of reporting a state the controller cannot follow.
"""

from __future__ import annotations

from enum import StrEnum

from edgefleet.agent.errors import AgentError
from edgefleet.protos.v1 import fleet_pb2

__all__ = ["TRANSITIONS", "UpdateEvent", "UpdateState", "next_state"]


class UpdateState(StrEnum):
    """Lifecycle of one deployment on the device."""

    PENDING = "pending"  # command accepted, nothing done yet
    DOWNLOADING = "downloading"  # fetching the artifact into downloads/
    VERIFYING = "verifying"  # checking the artifact's size and sha256
    LOADING = "loading"  # loading the model in onnxruntime and running its self-test
    ACTIVE = "active"  # the new model serves requests
    FAILED = "failed"  # the update stopped; the previous model still serves
    ROLLED_BACK = "rolled_back"  # the new model was activated, then replaced by the previous

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL

    def to_proto(self) -> int:
        return _STATE_TO_PROTO[self]


class UpdateEvent(StrEnum):
    """Outcome of an update step."""

    STARTED = "started"
    ALREADY_SERVING = "already_serving"  # the device already serves the requested variant
    DOWNLOADED = "downloaded"
    VERIFIED = "verified"
    LOADED = "loaded"  # loaded and passed the self-test
    FAILED = "failed"
    ROLLBACK = "rollback"


TRANSITIONS: dict[tuple[UpdateState, UpdateEvent], UpdateState] = {
    (UpdateState.PENDING, UpdateEvent.STARTED): UpdateState.DOWNLOADING,
    (UpdateState.PENDING, UpdateEvent.ALREADY_SERVING): UpdateState.ACTIVE,
    (UpdateState.DOWNLOADING, UpdateEvent.DOWNLOADED): UpdateState.VERIFYING,
    (UpdateState.VERIFYING, UpdateEvent.VERIFIED): UpdateState.LOADING,
    (UpdateState.LOADING, UpdateEvent.LOADED): UpdateState.ACTIVE,
    (UpdateState.PENDING, UpdateEvent.FAILED): UpdateState.FAILED,
    (UpdateState.DOWNLOADING, UpdateEvent.FAILED): UpdateState.FAILED,
    (UpdateState.VERIFYING, UpdateEvent.FAILED): UpdateState.FAILED,
    (UpdateState.LOADING, UpdateEvent.FAILED): UpdateState.FAILED,
    (UpdateState.ACTIVE, UpdateEvent.ROLLBACK): UpdateState.ROLLED_BACK,
}

_TERMINAL = frozenset({UpdateState.ACTIVE, UpdateState.FAILED, UpdateState.ROLLED_BACK})

_STATE_TO_PROTO = {
    UpdateState.PENDING: fleet_pb2.DEPLOYMENT_STATE_PENDING,
    UpdateState.DOWNLOADING: fleet_pb2.DEPLOYMENT_STATE_DOWNLOADING,
    UpdateState.VERIFYING: fleet_pb2.DEPLOYMENT_STATE_VERIFYING,
    UpdateState.LOADING: fleet_pb2.DEPLOYMENT_STATE_LOADING,
    UpdateState.ACTIVE: fleet_pb2.DEPLOYMENT_STATE_ACTIVE,
    UpdateState.FAILED: fleet_pb2.DEPLOYMENT_STATE_FAILED,
    UpdateState.ROLLED_BACK: fleet_pb2.DEPLOYMENT_STATE_ROLLED_BACK,
}


def next_state(state: UpdateState, event: UpdateEvent) -> UpdateState:
    """Return the state that ``event`` leads to from ``state``; raises ``AgentError`` if none."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise AgentError(
            f"update event {event.value!r} is not allowed in state {state.value!r}"
        ) from None
