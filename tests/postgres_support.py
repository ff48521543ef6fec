"""A throwaway PostgreSQL server on a free loopback port, for the database tests.

``PostgresServer`` runs Debian's ``initdb`` into a temporary directory and starts
``postgres`` listening on 127.0.0.1 only. ``create_database`` gives each test an empty
database, and ``drop_database`` removes it. PostgreSQL refuses to run as root, so under
root the server runs as the ``postgres`` user that Debian's package creates.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from mosquitto_support import free_port

INSTALL_HINT = (
    "PostgreSQL is not installed, and the database tests need a real server; install it "
    "with `apt-get update && apt-get install -y postgresql` (make test and .ci/run do this)"
)
USER = "edgefleet"
START_TIMEOUT_S = 30.0


def postgres_bindir() -> Path:
    """Return the folder of ``initdb`` and ``pg_ctl``; fail the test (never skip) when missing."""
    on_path = shutil.which("initdb")
    if on_path is not None:
        return Path(on_path).parent
    # Debian keeps the server binaries out of PATH, one folder per major version.
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: int(Path(path).parts[-3]),
    )
    if not found:
        pytest.fail(INSTALL_HINT)
    return Path(found[-1]).parent


class PostgresServer:
    """One ``postgres`` process with its own data directory; ``stop`` removes both."""

    def __init__(self) -> None:
        self.bindir = postgres_bindir()
        self.port = free_port()
        # Not under pytest's tmp_path: its parents are private to the test's user, and the
        # server may run as another one.
        self.directory = Path(tempfile.mkdtemp(prefix="edgefleet-postgres-"))
        self.data = self.directory / "data"
        self.log_path = self.directory / "postgres.log"
        self._run_as: list[str] = []
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                pytest.fail("the tests run as root and need runuser to start PostgreSQL")
            self._run_as = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.directory, user="postgres", group="postgres")

    def _run(self, *command: str) -> None:
        result = subprocess.run(
            [*self._run_as, *command],
            # The server's user may lack access to the test's working folder, so run in its own.
            cwd=self.directory,
            capture_output=True,
            text=True,
            check=False,
            timeout=START_TIMEOUT_S,
        )
        if result.returncode != 0:
            log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
            pytest.fail(
                f"{Path(command[0]).name} exited with {result.returncode}:\n"
                f"{result.stdout}{result.stderr}{log}"
            )

    def start(self) -> None:
        self._run(
            str(self.bindir / "initdb"),
            "--pgdata",
            str(self.data),
            "--username",
            USER,
            # Only loopback connections from this machine's tests reach the server.
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--no-sync",
        )
        self.resume()

    def resume(self) -> None:
        """Start the server on its data directory and port, as after ``pause``."""
        options = " ".join(
            [
                f"-p {self.port}",
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={self.directory}",
                # A test database may be lost in a crash; the tests never need it back.
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
            ]
        )
        self._run(
            str(self.bindir / "pg_ctl"),
            "--pgdata",
            str(self.data),
            "--log",
            str(self.log_path),
            "--options",
            options,
            "--wait",
            f"--timeout={int(START_TIMEOUT_S)}",
            "start",
        )

    def pause(self) -> None:
        """Stop the server, keeping its databases, so that clients see it go away."""
        self._run(
            str(self.bindir / "pg_ctl"),
            "--pgdata",
            str(self.data),
            "--mode",
            "fast",
            "--wait",
            "stop",
        )

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run(
                [
                    *self._run_as,
                    str(self.bindir / "pg_ctl"),
                    "--pgdata",
                    str(self.data),
                    "--mode",
                    "immediate",
                    "--wait",
                    "stop",
                ],
                cwd=self.directory,
                capture_output=True,
                check=False,
                timeout=START_TIMEOUT_S,
            )
        shutil.rmtree(self.directory, ignore_errors=True)

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{database}"

    def _admin(self, statement: str) -> None:
        import psycopg

        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with psycopg.connect(
                    host="127.0.0.1", port=self.port, user=USER, dbname="postgres", autocommit=True
                ) as connection:
                    connection.execute(statement)
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def create_database(self) -> str:
        """Create an empty database and return its name; ``url`` makes its URL."""
        name = f"test_{uuid.uuid4().hex[:12]}"
        self._admin(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """Start a ``PostgresServer`` and stop it, removing its files, on exit."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()
