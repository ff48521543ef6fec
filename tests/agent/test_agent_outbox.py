from __future__ import annotations

import random

import pytest

from edgefleet.agent.backoff import Backoff
from edgefleet.agent.outbox import Outbox
from edgefleet.protos.v1 import fleet_pb2


def status(deployment_id: str) -> fleet_pb2.AgentMessage:
    return fleet_pb2.AgentMessage(status=fleet_pb2.DeploymentStatus(deployment_id=deployment_id))


def test_outbox_returns_messages_in_order():
    outbox = Outbox()
    outbox.put(status("a"))
    outbox.put(status("b"))

    assert outbox.get(0.01).status.deployment_id == "a"
    assert outbox.get(0.01).status.deployment_id == "b"
    assert outbox.get(0.01) is None


def test_outbox_drops_oldest_when_full():
    outbox = Outbox(max_messages=2)
    for name in ("a", "b", "c"):
        outbox.put(status(name))

    assert outbox.dropped == 1
    assert [outbox.get(0.01).status.deployment_id for _ in range(2)] == ["b", "c"]


def test_outbox_put_back_goes_first():
    outbox = Outbox()
    outbox.put(status("a"))
    outbox.put(status("b"))
    taken = outbox.get(0.01)

    outbox.put_back(taken)

    assert outbox.get(0.01).status.deployment_id == "a"


def test_backoff_doubles_up_to_cap_with_jitter():
    backoff = Backoff(initial_s=0.5, max_s=4.0, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(8)]

    nominal = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    for delay, expected in zip(delays, nominal, strict=True):
        assert expected / 2 <= delay <= expected


def test_backoff_reset_starts_over():
    backoff = Backoff(initial_s=0.5, max_s=4.0)
    for _ in range(5):
        backoff.next_delay()

    backoff.reset()

    assert backoff.next_delay() <= 0.5


def test_backoff_rejects_invalid_bounds():
    with pytest.raises(ValueError, match="initial_s <= max_s"):
        Backoff(initial_s=5.0, max_s=1.0)
