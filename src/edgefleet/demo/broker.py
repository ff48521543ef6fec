"""A local Mosquitto broker for ``edgefleet demo --transport mqtt``.

Only the standard library is imported here, so the command can check for ``mosquitto``
before it loads the demo.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
from pathlib import Path

__all__ = ["MOSQUITTO_MISSING", "find_mosquitto", "mosquitto_command"]

# Debian and Ubuntu install the broker into /usr/sbin, which a user's PATH often lacks.
SYSTEM_DIRS: tuple[str, ...] = ("/usr/sbin", "/sbin")

MOSQUITTO_MISSING = (
    "the MQTT demo needs a Mosquitto broker, and `mosquitto` was not found on PATH or in "
    "{dirs}; install it (for example `apt-get install mosquitto`), or pass "
    "--broker mqtt://HOST:PORT to use a broker that is already running"
)


def find_mosquitto() -> str | None:
    """Return the path of the ``mosquitto`` binary, or None when it is not installed."""
    search = os.pathsep.join([os.environ.get("PATH", ""), *SYSTEM_DIRS])
    return shutil.which("mosquitto", path=search)


def missing_message() -> str:
    return MOSQUITTO_MISSING.format(dirs=", ".join(SYSTEM_DIRS) or "the system folders")


def mosquitto_command(binary: str, folder: Path, *, port: int) -> list[str]:
    """Write a loopback-only configuration into ``folder``; return the command to run it."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "mosquitto.conf"
    config.write_text(
        f"listener {port} 127.0.0.1\n"
        # Started as root, mosquitto switches to this user; staying the demo's user lets
        # it write its log into the demo's folder.
        f"user {getpass.getuser()}\n"
        "allow_anonymous true\n"
        "persistence false\n"
    )
    return [binary, "-c", str(config)]


def start_mosquitto(binary: str, folder: Path, *, port: int, log_path: Path):
    """Start the broker with output to ``log_path``; returns its ``subprocess.Popen``."""
    log = log_path.open("wb")
    process = subprocess.Popen(
        mosquitto_command(binary, folder, port=port),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    return process, log
