"""The update state machine: how one deployment moves from PENDING to a final state.

``TRANSITIONS`` is the whole flow, as data::

    PENDING ─started─> DOWNLOADING ─downloaded─> VERIFYING ─verified─> INSTALLING
      │                     ^──────────corrupt──────────┘                  │ installed
      └─already_serving─> ACTIVE <─healthy─ HEALTH_CHECK <─activated─ LOADING
                                               │ unhealthy
                                               v
                                         ROLLING_BACK ─rolled_back─> ROLLED_BACK

Every state before HEALTH_CHECK can also fail to FAILED, and so can ROLLING_BACK when not
even the committed model loads. ``next_state`` raises on any (state, event) pair that is
not in the table, so a step that runs out of order fails loudly instead of reporting a
state the controller cannot follow.

The agent writes the state to disk before each step. After a crash it resumes a download,
verification or install where it stopped (``RESUMABLE_STATES``), and rolls back a model
that was loading or under its health check, because the crash may have been that model's
doing. The committed model is the only one recorded as current on disk, so a restart
always serves it.
"""

from __future__ import annotations

from enum import StrEnum

from edgefleet.agent.errors import AgentError
from edgefleet.protos.v1 import fleet_pb2

__all__ = ["RESUMABLE_STATES", "TRANSITIONS", "UpdateEvent", "UpdateState", "next_state"]


class UpdateState(StrEnum):
    """Lifecycle of one deployment on the device."""

    PENDING = "pending"  # command accepted, nothing done yet
    DOWNLOADING = "downloading"  # fetching the artifact into downloads/
    VERIFYING = "verifying"  # checking the manifest, the artifact's size and sha256
    INSTALLING = "installing"  # moving the verified artifact into models/
    LOADING = "loading"  # loading the model in onnxruntime, self-test, swap it in
    HEALTH_CHECK = "health_check"  # the new model serves; self-test and latency on it
    ROLLING_BACK = "rolling_back"  # serving the committed model again
    ACTIVE = "active"  # the new model is committed and serves requests
    FAILED = "failed"  # the update stopped before the swap; the committed model serves
    ROLLED_BACK = "rolled_back"  # the new model served, failed its check and was replaced

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
    INSTALLED = "installed"
    ACTIVATED = "activated"  # loaded, passed the self-test and swapped in
    CORRUPT = "corrupt"  # a chunk or the file failed its check; the part file was deleted
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


_S, _E = UpdateState, UpdateEvent

TRANSITIONS: dict[tuple[UpdateState, UpdateEvent], UpdateState] = {
    (_S.PENDING, _E.STARTED): _S.DOWNLOADING,
    (_S.PENDING, _E.ALREADY_SERVING): _S.ACTIVE,
    (_S.DOWNLOADING, _E.DOWNLOADED): _S.VERIFYING,
    (_S.DOWNLOADING, _E.CORRUPT): _S.DOWNLOADING,
    (_S.VERIFYING, _E.CORRUPT): _S.DOWNLOADING,
    (_S.VERIFYING, _E.VERIFIED): _S.INSTALLING,
    (_S.INSTALLING, _E.INSTALLED): _S.LOADING,
    (_S.LOADING, _E.ACTIVATED): _S.HEALTH_CHECK,
    (_S.HEALTH_CHECK, _E.HEALTHY): _S.ACTIVE,
    (_S.HEALTH_CHECK, _E.UNHEALTHY): _S.ROLLING_BACK,
    (_S.ROLLING_BACK, _E.ROLLED_BACK): _S.ROLLED_BACK,
    (_S.PENDING, _E.FAILED): _S.FAILED,
    (_S.DOWNLOADING, _E.FAILED): _S.FAILED,
    (_S.VERIFYING, _E.FAILED): _S.FAILED,
    (_S.INSTALLING, _E.FAILED): _S.FAILED,
    (_S.LOADING, _E.FAILED): _S.FAILED,
    (_S.ROLLING_BACK, _E.FAILED): _S.FAILED,
}

# States whose step the agent repeats after a restart; nothing serves the new model yet.
RESUMABLE_STATES = frozenset({_S.PENDING, _S.DOWNLOADING, _S.VERIFYING, _S.INSTALLING})

_TERMINAL = frozenset({_S.ACTIVE, _S.FAILED, _S.ROLLED_BACK})

# The protocol's DeploymentState is coarser: installing is reported as verifying, and the
# health check and the rollback as loading, so controllers that predate them still follow.
_STATE_TO_PROTO = {
    _S.PENDING: fleet_pb2.DEPLOYMENT_STATE_PENDING,
    _S.DOWNLOADING: fleet_pb2.DEPLOYMENT_STATE_DOWNLOADING,
    _S.VERIFYING: fleet_pb2.DEPLOYMENT_STATE_VERIFYING,
    _S.INSTALLING: fleet_pb2.DEPLOYMENT_STATE_VERIFYING,
    _S.LOADING: fleet_pb2.DEPLOYMENT_STATE_LOADING,
    _S.HEALTH_CHECK: fleet_pb2.DEPLOYMENT_STATE_LOADING,
    _S.ROLLING_BACK: fleet_pb2.DEPLOYMENT_STATE_LOADING,
    _S.ACTIVE: fleet_pb2.DEPLOYMENT_STATE_ACTIVE,
    _S.FAILED: fleet_pb2.DEPLOYMENT_STATE_FAILED,
    _S.ROLLED_BACK: fleet_pb2.DEPLOYMENT_STATE_ROLLED_BACK,
}


def next_state(state: UpdateState, event: UpdateEvent) -> UpdateState:
    """Return the state that ``event`` leads to from ``state``; raises ``AgentError`` if none."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise AgentError(
            f"update event {event.value!r} is not allowed in state {state.value!r}"
        ) from None
