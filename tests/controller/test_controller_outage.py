"""Telemetry ingest through a database outage, on a PostgreSQL server stopped and started."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_support import serve_api
from controller_support import make_sample, wait_for
from postgres_support import PostgresServer, running_postgres

from edgefleet.controller.config import ControllerConfig
from edgefleet.controller.service import Controller
from edgefleet.profiles import DeviceProfile


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A server of this test's own, since stopping the shared one would fail other tests."""
    with running_postgres() as server:
        yield server


@pytest.fixture
def controller(
    tmp_path: Path, controller_config: ControllerConfig, own_postgres: PostgresServer
) -> Iterator[Controller]:
    url = own_postgres.url(own_postgres.create_database())
    controller = Controller(controller_config, data_dir=tmp_path / "controller", database_url=url)
    controller.start()
    yield controller
    controller.shutdown(grace_s=0.5)


def test_telemetry_held_through_database_outage(
    controller: Controller, profile: DeviceProfile, own_postgres: PostgresServer
) -> None:
    controller.register_device("dev-1", profile)
    receipts: list[int] = []
    for seq in range(1, 11):
        controller.submit_telemetry("dev-1", make_sample(seq=seq), receipts.append)
    wait_for(lambda: controller.registry.count_telemetry("dev-1") == 10)
    wait_for(lambda: receipts and max(receipts) == 10)

    own_postgres.pause()
    for seq in range(11, 41):
        controller.submit_telemetry("dev-1", make_sample(seq=seq), receipts.append)
    # Several attempts to store fail while the server is down.
    time.sleep(2.0)
    assert max(receipts) == 10, "no receipt may cover a sample that was not stored"
    assert controller.ingest_stats().dropped == 0
    own_postgres.resume()

    wait_for(lambda: controller.registry.count_telemetry("dev-1") == 40, timeout_s=60)
    wait_for(lambda: max(receipts) == 40)
    stored = controller.registry.recent_telemetry("dev-1", limit=40)
    assert sorted(record.seq for record in stored) == list(range(1, 41))
    assert controller.ingest_stats().dropped == 0


def test_api_returns_503_during_outage(
    controller: Controller, profile: DeviceProfile, own_postgres: PostgresServer
) -> None:
    with serve_api(controller, profile) as api:
        assert api.client.get("/api/v1/devices").status_code == 200

        own_postgres.pause()
        for path in ("/api/v1/devices", "/metrics", "/api/v1/health"):
            response = api.client.get(path)
            assert response.status_code == 503, (path, response.text)
            error = response.json()["error"]
            assert error["code"] == "database_unavailable", path
            assert "retry once it is back" in error["message"], path
        own_postgres.resume()

        wait_for(lambda: api.client.get("/api/v1/health").status_code == 200, timeout_s=30)
        assert api.client.get("/api/v1/devices").status_code == 200
        assert api.client.get("/metrics").status_code == 200
