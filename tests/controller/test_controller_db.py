"""Schema migration and engine set-up, on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from controller_support import BACKENDS
from mosquitto_support import free_port

from edgefleet.controller.db import alembic_config, open_database, redact_url
from edgefleet.controller.errors import DatabaseError
from edgefleet.controller.models import Base

on_each_backend = pytest.mark.parametrize("database_url", BACKENDS, indirect=True)


@pytest.fixture
def url(tmp_path: Path, database_url: str | None) -> str:
    return database_url or f"sqlite:///{tmp_path / 'registry.db'}"


def _head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


@on_each_backend
def test_empty_database_migrates_to_head(url: str, request: pytest.FixtureRequest) -> None:
    database = open_database(url)
    assert database.engine.dialect.name == request.node.callspec.params["database_url"]
    with database.engine.connect() as connection:
        revision = MigrationContext.configure(connection).get_current_revision()
        tables = set(sa.inspect(connection).get_table_names())
    database.close()

    assert revision == _head_revision()
    expected = {"devices", "profiles", "models", "plans", "variants", "deployments"}
    assert expected | {"telemetry", "events"} <= tables


@on_each_backend
def test_orm_matches_migrated_schema(url: str) -> None:
    database = open_database(url)
    with database.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)
    database.close()

    assert differences == []


@on_each_backend
def test_reopening_migrated_database_keeps_data(url: str) -> None:
    first = open_database(url)
    with first.engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO profiles (fingerprint, name, profile, created_at) "
                "VALUES ('abc', 'p', '{}', :created_at)"
            ),
            {"created_at": datetime(2024, 1, 1, tzinfo=UTC)},
        )
    first.close()

    second = open_database(url)
    with second.engine.connect() as connection:
        count = connection.execute(sa.text("SELECT count(*) FROM profiles")).scalar_one()
    second.close()

    assert count == 1


@on_each_backend
def test_foreign_keys_reject_orphan_device(url: str) -> None:
    database = open_database(url)
    statement = sa.text(
        "INSERT INTO devices (device_id, profile_fingerprint, profile, state, pinned, "
        "agent_version, onnxruntime_version, registered_at) "
        "VALUES ('d', 'missing', '{}', 'offline', :pinned, '', '', :registered_at)"
    )
    try:
        with (
            database.engine.begin() as connection,
            pytest.raises(sa.exc.IntegrityError, match=r"(?i)foreign key"),
        ):
            connection.execute(
                statement, {"pinned": False, "registered_at": datetime(2024, 1, 1, tzinfo=UTC)}
            )
    finally:
        database.close()


def test_sqlite_uses_wal_and_foreign_keys(tmp_path: Path) -> None:
    database = open_database(f"sqlite:///{tmp_path / 'pragmas.db'}")
    with database.engine.connect() as connection:
        journal_mode = connection.exec_driver_sql("PRAGMA journal_mode").scalar_one()
        foreign_keys = connection.exec_driver_sql("PRAGMA foreign_keys").scalar_one()
    database.close()

    assert journal_mode == "wal"
    assert foreign_keys == 1


@pytest.mark.parametrize(
    ("bad_url", "message"),
    [
        ("garbage", "invalid database URL"),
        ("mysql+nosuchdriver://user@127.0.0.1/db", "no driver"),
    ],
)
def test_database_url_errors_are_clear(bad_url: str, message: str) -> None:
    with pytest.raises(DatabaseError, match=message):
        open_database(bad_url)


@pytest.mark.parametrize(
    ("bad_url", "message"),
    [
        ("postgresql+psycopg://fleet:secretpw@127.0.0.1:notaport/db", "invalid literal for int"),
        ("postgresql+psycopg://fleet:secret@pw@127.0.0.1:5432/db", "percent-encode"),
    ],
)
def test_invalid_url_hides_password(bad_url: str, message: str) -> None:
    with pytest.raises(DatabaseError, match=message) as failure:
        open_database(bad_url)

    text = str(failure.value)
    assert "invalid database URL" in text
    assert "fleet:***@127.0.0.1" in text
    assert "secret" not in text
    assert "pw@" not in text


def test_redacted_url_masks_password_parameters() -> None:
    url = sa.make_url(
        "postgresql+psycopg:///fleet?host=127.0.0.1&user=fleet&password=secretpw&sslpassword=k"
    )

    text = redact_url(url)

    assert "secretpw" not in text
    assert "sslpassword=REDACTED" in text
    assert "user=fleet" in text


def test_unreachable_postgresql_hides_password() -> None:
    url = f"postgresql+psycopg://edgefleet:secret@127.0.0.1:{free_port()}/fleet"

    with pytest.raises(DatabaseError) as failure:
        open_database(url)

    message = str(failure.value)
    assert "cannot connect to database postgresql+psycopg://edgefleet:***@127.0.0.1" in message
    assert "secret" not in message


def test_sqlite_parent_folder_created(tmp_path):
    database = open_database(f"sqlite:///{tmp_path / 'new' / 'folder' / 'registry.db'}")
    database.close()

    assert (tmp_path / "new" / "folder" / "registry.db").is_file()


def _start_replica(url: str) -> str | None:
    """Open ``url`` as a controller process does at start; return its schema revision."""
    database = open_database(url)
    try:
        with database.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        database.close()


def test_replicas_migrate_together(postgres_url: str) -> None:
    """Controller replicas that start together on an empty database all reach head.

    Separate processes, as replicas are: Alembic's migration context is process-global.
    """
    replicas = 4
    with ProcessPoolExecutor(replicas, mp_context=multiprocessing.get_context("spawn")) as pool:
        revisions = list(pool.map(_start_replica, [postgres_url] * replicas))

    assert revisions == [_head_revision()] * replicas
