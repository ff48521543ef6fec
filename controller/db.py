"""Database engine setup and schema migration.

``open_database(url)`` connects, migrates the schema to the newest Alembic revision and
returns a ``Database``. A fresh database and one from an older release both end at head.
SQLite (the default) runs in WAL mode so telemetry writes do not block readers, with
foreign keys enforced; PostgreSQL works by URL (``postgresql+psycopg://...``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from edgefleet.controller.errors import DatabaseError

__all__ = ["Database", "alembic_config", "database_unavailable", "error_summary", "open_database"]

logger = logging.getLogger(__name__)

# Seconds a SQLite writer waits for another writer's lock before failing with
# "database is locked". Telemetry ingest, the planner and retention write concurrently.
SQLITE_BUSY_TIMEOUT_S = 30
# Query parameters of a database URL that carry secrets (libpq's names).
_SECRET_PARAMETERS = frozenset({"password", "sslpassword"})

# Key of the PostgreSQL advisory lock held while the schema is migrated; any constant that
# other applications sharing the database do not use.
MIGRATION_LOCK_KEY = 0x6564676566_6C74  # "edgeflt" in ASCII


class Database:
    """An engine and a session factory over a migrated database."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        # expire_on_commit=False: rows returned by the registry stay readable after their
        # session closes, as snapshots of the committed values.
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @property
    def url(self) -> str:
        return redact_url(self.engine.url)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """Open a session that commits on success and rolls back on error."""
        with self._sessions.begin() as session:
            yield session

    def close(self) -> None:
        self.engine.dispose()


def redact_url(url: sa.URL) -> str:
    """Render ``url`` for logs and messages, with its password and password parameters masked."""
    query = {
        key: ("REDACTED" if key.lower() in _SECRET_PARAMETERS else value)
        for key, value in url.query.items()
    }
    return url.set(query=query).render_as_string(hide_password=True)


def _mask_password(url: str) -> str:
    """Mask the password of a URL string that SQLAlchemy could not parse."""
    return re.sub(r"(://[^:/@]*:).*@", r"\1***@", url)


def database_unavailable(exc: BaseException) -> bool:
    """Return whether ``exc`` means an unreachable or busy database, not invalid data."""
    if isinstance(exc, sa.exc.OperationalError | sa.exc.DisconnectionError):
        return True
    return isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated


def error_summary(exc: BaseException) -> str:
    """Return the first line of ``exc``'s message, or its type name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def alembic_config(url: str | None = None):  # -> alembic.config.Config
    """Build the Alembic configuration of the registry schema, independent of the CWD."""
    from alembic.config import Config

    config = Config()
    script_location = resources.files("edgefleet.controller") / "migrations"
    config.set_main_option("script_location", str(script_location))
    config.set_main_option("path_separator", "os")
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def open_database(url: str, *, migrate: bool = True) -> Database:
    """Connect to ``url`` and, unless ``migrate`` is false, upgrade the schema to head.

    Raises ``DatabaseError`` when the database is unreachable or a migration fails.
    """
    engine = _create_engine(url)
    if migrate:
        try:
            upgrade_to_head(engine)
        except (sa.exc.SQLAlchemyError, OSError) as exc:
            engine.dispose()
            if isinstance(exc, sa.exc.SQLAlchemyError) and database_unavailable(exc):
                check = (
                    "that the file's folder exists and is writable"
                    if engine.dialect.name == "sqlite"
                    else "that the server runs, and the URL's host, port, user and password"
                )
                raise DatabaseError(
                    f"cannot connect to database {redact_url(engine.url)}: {exc}; check {check}"
                ) from exc
            raise DatabaseError(
                f"cannot migrate database {redact_url(engine.url)} to the newest schema: {exc}"
            ) from exc
    return Database(engine)


def upgrade_to_head(engine: sa.Engine) -> None:
    """Run ``alembic upgrade head`` on ``engine``."""
    from alembic import command

    config = alembic_config()
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Controller replicas starting together on one database take turns: the lock
            # is held until this transaction commits, and PostgreSQL runs DDL inside it, so
            # the next replica finds the schema at head and has nothing to do.
            connection.execute(
                sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
            )
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    logger.info("database %s is at the newest schema", redact_url(engine.url))


def _create_engine(url: str) -> sa.Engine:
    try:
        parsed = sa.make_url(url)
        parsed.port  # noqa: B018 - make_url parses the port lazily, and may raise here
    except (sa.exc.ArgumentError, ValueError) as exc:
        raise DatabaseError(
            f"invalid database URL {_mask_password(url)!r} ({exc}); use for example "
            "sqlite:///path/to/controller.db or postgresql+psycopg://user:password@host/dbname, "
            "with special characters of the password percent-encoded (@ as %40)"
        ) from None
    if parsed.host and "@" in parsed.host:
        # An unencoded @ in the password splits it, and its second part reads as the host.
        raise DatabaseError(
            f"invalid database URL {_mask_password(url)!r}: its host contains '@'; "
            "percent-encode special characters of the password (@ as %40)"
        )
    if parsed.get_backend_name() != "sqlite":
        try:
            return sa.create_engine(parsed, pool_pre_ping=True)
        except (ImportError, sa.exc.NoSuchModuleError) as exc:
            raise DatabaseError(
                f"no driver for database URL {redact_url(parsed)}: "
                f"{exc}; for PostgreSQL install edgefleet[postgresql]"
            ) from exc

    in_memory = parsed.database in (None, "", ":memory:")
    if not in_memory:
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(
        parsed,
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S},
        # An in-memory database lives only as long as its one connection.
        poolclass=sa.pool.StaticPool if in_memory else sa.pool.QueuePool,
    )
    event.listen(engine, "connect", _configure_sqlite_connection)
    return engine


def _configure_sqlite_connection(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # WAL lets readers proceed while one writer commits; synchronous=NORMAL is
        # durable across application crashes in WAL mode (an OS crash may lose the
        # last transactions, never corrupt the file).
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
    finally:
        cursor.close()
