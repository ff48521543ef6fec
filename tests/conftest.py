"""Fixtures shared by every test folder: a real Mosquitto broker and a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mosquitto_support import MosquittoBroker
from postgres_support import PostgresServer, running_postgres


@pytest.fixture
def start_broker(tmp_path: Path) -> Iterator[Callable[..., MosquittoBroker]]:
    """Factory starting a ``MosquittoBroker``; every broker stops at the end of the test."""
    brokers: list[MosquittoBroker] = []

    def start(*, settings: str = "allow_anonymous true\n") -> MosquittoBroker:
        broker = MosquittoBroker(tmp_path / f"broker-{len(brokers)}", settings=settings)
        brokers.append(broker)
        broker.start()
        return broker

    yield start
    for broker in brokers:
        broker.stop()


@pytest.fixture
def broker(start_broker: Callable[..., MosquittoBroker]) -> MosquittoBroker:
    """A running broker that accepts anonymous clients."""
    return start_broker()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session, started by the first test that needs it."""
    with running_postgres() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of an empty PostgreSQL database, dropped at the end of the test."""
    name = postgres_server.create_database()
    yield postgres_server.url(name)
    postgres_server.drop_database(name)
