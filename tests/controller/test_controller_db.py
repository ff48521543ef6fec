from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from edgefleet.controller.db import alembic_config, open_database
from edgefleet.controller.errors import DatabaseError
from edgefleet.controller.models import Base


def _head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def test_empty_database_migrates_to_head(tmp_path: Path) -> None:
    database = open_database(f"sqlite:///{tmp_path / 'fresh.db'}")
    with database.engine.connect() as connection:
        revision = MigrationContext.configure(connection).get_current_revision()
        tables = set(sa.inspect(connection).get_table_names())
    database.close()

    assert revision == _head_revision()
    expected = {"devices", "profiles", "models", "plans", "variants", "deployments"}
    assert expected | {"telemetry", "events"} <= tables


def test_orm_matches_migrated_schema(tmp_path: Path) -> None:
    database = open_database(f"sqlite:///{tmp_path / 'schema.db'}")
    with database.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)
    database.close()

    assert differences == []


def test_reopening_migrated_database_keeps_data(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'twice.db'}"
    first = open_database(url)
    with first.engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO profiles (fingerprint, name, profile, created_at) "
                "VALUES ('abc', 'p', '{}', '2024-01-01 00:00:00')"
            )
        )
    first.close()

    second = open_database(url)
    with second.engine.connect() as connection:
        count = connection.execute(sa.text("SELECT count(*) FROM profiles")).scalar_one()
    second.close()

    assert count == 1


def test_sqlite_uses_wal_and_foreign_keys(tmp_path: Path) -> None:
    database = open_database(f"sqlite:///{tmp_path / 'pragmas.db'}")
    with database.engine.connect() as connection:
        journal_mode = connection.exec_driver_sql("PRAGMA journal_mode").scalar_one()
        foreign_keys = connection.exec_driver_sql("PRAGMA foreign_keys").scalar_one()
    database.close()

    assert journal_mode == "wal"
    assert foreign_keys == 1


def test_foreign_keys_reject_orphan_device(tmp_path: Path) -> None:
    database = open_database(f"sqlite:///{tmp_path / 'fk.db'}")
    statement = sa.text(
        "INSERT INTO devices (device_id, profile_fingerprint, profile, state, pinned, "
        "agent_version, onnxruntime_version, registered_at) "
        "VALUES ('d', 'missing', '{}', 'offline', 0, '', '', '2024-01-01 00:00:00')"
    )
    try:
        with database.engine.begin() as connection:
            connection.execute(statement)
    except sa.exc.IntegrityError:
        rejected = True
    else:
        rejected = False
    database.close()

    assert rejected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("garbage", "invalid database URL"),
        ("mysql+nosuchdriver://user@127.0.0.1/db", "no driver"),
    ],
)
def test_database_url_errors_are_clear(url, message):
    with pytest.raises(DatabaseError, match=message):
        open_database(url)


def test_sqlite_parent_folder_created(tmp_path):
    database = open_database(f"sqlite:///{tmp_path / 'new' / 'folder' / 'registry.db'}")
    database.close()

    assert (tmp_path / "new" / "folder" / "registry.db").is_file()
