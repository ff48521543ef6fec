"""A real controller stopped in the middle of an artifact transfer, and an agent process
that must resume the transfer and end on the verified variant."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest
from fleet_support import fleet_config, wait_for, write_profile
from ladder_support import LARGE_FEATURES, linear_variant, store_ladder

import edgefleet.controller.grpc_server as grpc_server
from edgefleet.agent.store import AgentStore
from edgefleet.profiles import load_profile

pytestmark = pytest.mark.slow


def serving_variant(agent) -> str | None:
    health = agent.health()
    return health.get("variant_id") if health else None


def test_controller_stopped_mid_transfer_resumes(
    start_controller, start_agent, tmp_path, monkeypatch
):
    fleet = start_controller(fleet_config())
    profile = write_profile(tmp_path / "shared.toml", "outage-board")
    manifest = store_ladder(
        fleet.controller, load_profile(profile), *linear_variant(LARGE_FEATURES, scale=2.0)
    )
    served: list[int] = []
    original = grpc_server.open_artifact

    def slow_artifact(controller, request):
        # Chunks leave slowly, so that the controller stops in the middle of the transfer.
        total, chunks = original(controller, request)

        def paced():
            for offset, data in chunks:
                time.sleep(0.3)
                served.append(offset)
                yield offset, data

        return total, paced()

    monkeypatch.setattr(grpc_server, "open_artifact", slow_artifact)
    agent = start_agent("pi-outage", fleet.port, profile_name="outage-board")
    wait_for(lambda: len(served) >= 2, timeout_s=60, what="the first chunks")

    stopper = threading.Thread(target=fleet.stop)
    stopper.start()
    stopper.join(timeout=10)
    part = AgentStore(agent.state_dir).part_path(manifest.sha256)
    cut_at = part.stat().st_size
    assert 0 < cut_at < manifest.size_bytes, "the transfer was not cut in the middle"
    monkeypatch.setattr(grpc_server, "open_artifact", original)
    fleet.start()

    wait_for(lambda: serving_variant(agent) == manifest.variant_id, timeout_s=90, what="deploy")
    assert "resuming download of" in agent.log()
    installed = AgentStore(agent.state_dir).model_path(manifest.sha256).read_bytes()
    assert hashlib.sha256(installed).hexdigest() == manifest.sha256
    assert AgentStore(agent.state_dir).state.current == manifest.sha256
