"""Start and stop the demo's controller and agents as separate processes."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

logger = logging.getLogger(__name__)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, *, timeout_s: float, process: subprocess.Popen[bytes]) -> None:
    """Block until something accepts connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process {process.args!r} exited with code {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout_s:.0f} s")


@dataclass
class ManagedProcess:
    """A child process with its log file; ``stop`` sends SIGTERM, then SIGKILL after a grace."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, *, grace_s: float = 10.0) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                logger.warning("%s ignored SIGTERM for %.0f s; killing it", self.name, grace_s)
                self.process.kill()
                self.process.wait()
        self.log_file.close()
        return self.process.returncode


def start_process(
    name: str,
    args: Sequence[str],
    *,
    log_dir: Path,
    cpu_cores: frozenset[int] | None = None,
) -> ManagedProcess:
    """Run ``python -m edgefleet ARGS`` with output to ``log_dir/NAME.log``.

    With ``cpu_cores`` the child is confined to those cores before it starts, so every
    thread it creates (onnxruntime's and gRPC's included) inherits the affinity.
    """
    log_path = log_dir / f"{name}.log"
    log_file = log_path.open("wb")
    command = [sys.executable, "-m", "edgefleet", *args]

    def confine() -> None:
        if cpu_cores:
            os.sched_setaffinity(0, cpu_cores)

    # NOTE: preexec_fn is only safe while the parent runs no other threads; the demo
    # starts every process before it starts its traffic threads and live view.
    process = subprocess.Popen(
        command,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        preexec_fn=confine if cpu_cores else None,
    )
    logger.debug("started %s (pid %d): %s", name, process.pid, " ".join(command))
    return ManagedProcess(name=name, process=process, log_path=log_path, log_file=log_file)


def tail(path: Path, *, lines: int = 20) -> str:
    """Return the last ``lines`` lines of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
