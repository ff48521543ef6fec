"""Shared fixtures: a migrated registry, a running controller and a gRPC stub.

Both run on SQLite unless a module parametrizes ``database_url`` with ``BACKENDS``
(indirectly), which runs its tests on SQLite and on a real PostgreSQL server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from controller_support import BACKENDS, PROFILE_FIELDS

from edgefleet.controller.config import ControllerConfig
from edgefleet.controller.db import Database, open_database
from edgefleet.controller.policy import PolicyConfig
from edgefleet.controller.registry import Registry
from edgefleet.controller.service import Controller
from edgefleet.profiles import DeviceProfile, parse_profile
from edgefleet.protos.limits import CHANNEL_OPTIONS
from edgefleet.protos.v1 import fleet_pb2_grpc


@pytest.fixture
def profile() -> DeviceProfile:
    return parse_profile(PROFILE_FIELDS)


@pytest.fixture
def database_url(request: pytest.FixtureRequest) -> str | None:
    """The URL of an empty PostgreSQL database, or None for SQLite in a test folder."""
    backend = getattr(request, "param", "sqlite")
    if backend == "postgresql":
        return request.getfixturevalue("postgres_url")
    if backend != "sqlite":
        raise ValueError(f"unknown database backend {backend!r}; use one of {BACKENDS}")
    return None


@pytest.fixture
def database(tmp_path: Path, database_url: str | None) -> Iterator[Database]:
    database = open_database(database_url or f"sqlite:///{tmp_path / 'registry.db'}")
    yield database
    database.close()


@pytest.fixture
def registry(database: Database) -> Registry:
    return Registry(database)


@pytest.fixture
def controller_config() -> ControllerConfig:
    return ControllerConfig(
        host_calibration_duration_s=0.2,
        shutdown_grace_s=1.0,
        policy=PolicyConfig(breach_samples=3, headroom_samples=5, cooldown_s=0.0),
    )


@pytest.fixture
def controller(
    tmp_path: Path, controller_config: ControllerConfig, database_url: str | None
) -> Iterator[Controller]:
    controller = Controller(
        controller_config, data_dir=tmp_path / "controller", database_url=database_url
    )
    controller.start()
    yield controller
    controller.shutdown(grace_s=0.5)


@pytest.fixture
def grpc_port(controller: Controller) -> int:
    return controller.serve_grpc(host="127.0.0.1", port=0)


@pytest.fixture
def channel(grpc_port: int) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}", options=CHANNEL_OPTIONS) as channel:
        yield channel


@pytest.fixture
def stub(channel: grpc.Channel) -> fleet_pb2_grpc.FleetServiceStub:
    return fleet_pb2_grpc.FleetServiceStub(channel)
