from __future__ import annotations

import pytest

import edgefleet.agent
from edgefleet.agent.errors import AgentError
from edgefleet.agent.update import TRANSITIONS, UpdateEvent, UpdateState, next_state
from edgefleet.protos.v1 import fleet_pb2


def test_update_happy_path_reaches_active():
    state = UpdateState.PENDING
    for event in (
        UpdateEvent.STARTED,
        UpdateEvent.DOWNLOADED,
        UpdateEvent.VERIFIED,
        UpdateEvent.LOADED,
    ):
        state = next_state(state, event)
    assert state is UpdateState.ACTIVE


@pytest.mark.parametrize("state", [s for s in UpdateState if not s.terminal])
def test_update_failure_allowed_from_every_open_state(state):
    assert next_state(state, UpdateEvent.FAILED) is UpdateState.FAILED


@pytest.mark.parametrize("state", [s for s in UpdateState if s.terminal])
def test_update_terminal_states_cannot_fail_again(state):
    with pytest.raises(AgentError, match="not allowed"):
        next_state(state, UpdateEvent.FAILED)


def test_update_out_of_order_event_rejected():
    with pytest.raises(AgentError, match="'loaded' is not allowed in state 'downloading'"):
        next_state(UpdateState.DOWNLOADING, UpdateEvent.LOADED)


def test_update_states_mirror_protobuf_enum():
    names = {fleet_pb2.DeploymentState.Name(state.to_proto()) for state in UpdateState}
    expected = set(fleet_pb2.DeploymentState.keys()) - {"DEPLOYMENT_STATE_UNSPECIFIED"}
    assert names == expected
    for state in UpdateState:
        assert fleet_pb2.DeploymentState.Name(state.to_proto()) == f"DEPLOYMENT_STATE_{state.name}"


def test_update_every_transition_leaves_an_open_state():
    assert all(not state.terminal or event is UpdateEvent.ROLLBACK for state, event in TRANSITIONS)


def test_agent_exports_sorted_and_present():
    exported = edgefleet.agent.__all__
    assert exported == sorted(exported)
    assert set(exported) == set(edgefleet.agent._MODULE_OF)
    for name in exported:
        assert hasattr(edgefleet.agent, name), name


def test_agent_unknown_attribute_raises():
    with pytest.raises(AttributeError, match="no attribute 'Missing'"):
        edgefleet.agent.Missing  # noqa: B018
