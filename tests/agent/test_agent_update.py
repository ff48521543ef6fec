from __future__ import annotations

import pytest

import edgefleet.agent
from edgefleet.agent.errors import AgentError
from edgefleet.agent.update import (
    RESUMABLE_STATES,
    TRANSITIONS,
    UpdateEvent,
    UpdateState,
    next_state,
)
from edgefleet.protos.v1 import fleet_pb2


def test_update_happy_path_reaches_active():
    state = UpdateState.PENDING
    for event in (
        UpdateEvent.STARTED,
        UpdateEvent.DOWNLOADED,
        UpdateEvent.VERIFIED,
        UpdateEvent.INSTALLED,
        UpdateEvent.ACTIVATED,
        UpdateEvent.HEALTHY,
    ):
        state = next_state(state, event)
    assert state is UpdateState.ACTIVE


def test_update_unhealthy_rolls_back():
    state = next_state(UpdateState.HEALTH_CHECK, UpdateEvent.UNHEALTHY)
    assert state is UpdateState.ROLLING_BACK
    assert next_state(state, UpdateEvent.ROLLED_BACK) is UpdateState.ROLLED_BACK


@pytest.mark.parametrize("state", [UpdateState.DOWNLOADING, UpdateState.VERIFYING])
def test_update_corrupt_artifact_fetched_again(state):
    assert next_state(state, UpdateEvent.CORRUPT) is UpdateState.DOWNLOADING


@pytest.mark.parametrize(
    "state", [s for s in UpdateState if not s.terminal and s is not UpdateState.HEALTH_CHECK]
)
def test_update_failure_allowed_before_swap(state):
    assert next_state(state, UpdateEvent.FAILED) is UpdateState.FAILED


def test_update_health_check_cannot_fail_without_rollback():
    with pytest.raises(AgentError, match="'failed' is not allowed in state 'health_check'"):
        next_state(UpdateState.HEALTH_CHECK, UpdateEvent.FAILED)


@pytest.mark.parametrize("state", [s for s in UpdateState if s.terminal])
def test_update_terminal_states_have_no_exit(state):
    for event in UpdateEvent:
        with pytest.raises(AgentError, match="not allowed"):
            next_state(state, event)


def test_update_out_of_order_event_rejected():
    with pytest.raises(AgentError, match="'activated' is not allowed in state 'downloading'"):
        next_state(UpdateState.DOWNLOADING, UpdateEvent.ACTIVATED)


def test_update_every_state_reachable():
    reached = {UpdateState.PENDING} | set(TRANSITIONS.values())
    assert reached == set(UpdateState)


def test_update_resumable_states_precede_swap():
    assert UpdateState.LOADING not in RESUMABLE_STATES
    assert UpdateState.HEALTH_CHECK not in RESUMABLE_STATES
    assert all(not state.terminal for state in RESUMABLE_STATES)


def test_update_states_map_to_protobuf_enum():
    reported = {fleet_pb2.DeploymentState.Name(state.to_proto()) for state in UpdateState}
    expected = set(fleet_pb2.DeploymentState.keys()) - {"DEPLOYMENT_STATE_UNSPECIFIED"}
    assert reported == expected
    for state in UpdateState:
        name = f"DEPLOYMENT_STATE_{state.name}"
        if name in expected:
            assert fleet_pb2.DeploymentState.Value(name) == state.to_proto()


def test_agent_exports_sorted_and_present():
    exported = edgefleet.agent.__all__
    assert exported == sorted(exported)
    assert set(exported) == set(edgefleet.agent._MODULE_OF)
    for name in exported:
        assert hasattr(edgefleet.agent, name), name


def test_agent_unknown_attribute_raises():
    with pytest.raises(AttributeError, match="no attribute 'Missing'"):
        edgefleet.agent.Missing  # noqa: B018
