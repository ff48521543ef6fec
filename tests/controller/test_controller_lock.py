"""One controller per data directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgefleet.controller.config import ControllerConfig
from edgefleet.controller.errors import ControllerStateError
from edgefleet.controller.service import Controller


def test_second_controller_on_data_dir_rejected(tmp_path: Path) -> None:
    first = Controller(ControllerConfig(), data_dir=tmp_path)
    first.start()
    try:
        second = Controller(ControllerConfig(), data_dir=tmp_path)
        with pytest.raises(ControllerStateError, match="another controller") as raised:
            second.start()
    finally:
        first.shutdown(grace_s=0)

    assert str(tmp_path) in str(raised.value)
    assert "--data-dir" in str(raised.value)


def test_data_dir_free_after_shutdown_and_kill(tmp_path: Path) -> None:
    first = Controller(ControllerConfig(), data_dir=tmp_path)
    first.start()
    first.shutdown(grace_s=0)
    # A process that dies without shutting down releases the lock as it exits.
    code = (
        "from edgefleet.controller.service import Controller\n"
        f"Controller(data_dir={str(tmp_path)!r}).start()\n"
        "import os; os._exit(9)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], check=False, timeout=120)
    assert result.returncode == 9, "the child did not start its controller"

    again = Controller(ControllerConfig(), data_dir=tmp_path)
    again.start()
    again.shutdown(grace_s=0)
