"""The demo end to end, as ``make demo`` runs it, with a fresh model cache."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest

from edgefleet.controller.api_tokens import ApiTokenStore
from edgefleet.controller.db import open_database
from edgefleet.controller.models import ApiTokenRole

pytestmark = pytest.mark.slow

DEVICE_KEYS = {
    "device_id",
    "profile",
    "variant_id",
    "accuracy",
    "size_bytes",
    "latency_p95_ms",
    "latency_budget_ms",
    "model_memory_budget_mb",
    "peak_memory_mb",
}
EVENT_KEYS = {"kind", "device_id", "reason", "from_variant", "to_variant", "at"}


def test_demo_json_meets_every_check(tmp_path):
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    command = [
        sys.executable, "-m", "edgefleet", "demo", "--json",
        "--workdir", str(tmp_path / "run"), "--http-port", "0",
    ]  # fmt: skip
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )

    assert result.returncode == 0, result.stderr[-4000:]
    dashboard = re.search(r"dashboard: http://127\.0\.0\.1:\d+/#token=(\S+)", result.stderr)
    assert dashboard, result.stderr[-4000:]
    assert re.fullmatch(r"efa1\.[0-9a-f]{16}\.[A-Za-z0-9_-]{43}", dashboard.group(1))
    database = open_database(f"sqlite:///{tmp_path / 'run' / 'controller.db'}")
    try:
        token = ApiTokenStore(database).authenticate(dashboard.group(1))
    finally:
        database.close()
    assert token.role is ApiTokenRole.OPERATOR
    summary = json.loads(result.stdout)
    assert len(summary["devices"]) == 3
    for device in summary["devices"]:
        assert set(device) >= DEVICE_KEYS
        assert device["latency_p95_ms"] <= device["latency_budget_ms"]
        assert device["peak_memory_mb"] <= device["model_memory_budget_mb"]
    for event in summary["events"]:
        assert set(event) >= EVENT_KEYS
    kinds = [event["kind"] for event in summary["events"]]
    assert "stepped_down" in kinds or "recompressed" in kinds
    assert all(check["passed"] for check in summary["checks"]), summary["checks"]


def test_demo_rejects_invalid_http_port():
    result = subprocess.run(
        [sys.executable, "-m", "edgefleet", "demo", "--http-port", "70000"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--http-port 70000 is not a port" in result.stderr


def test_demo_sigterm_stops_every_child(tmp_path):
    import psutil

    command = [sys.executable, "-m", "edgefleet", "demo", "--workdir", str(tmp_path / "run")]
    env = {**os.environ, "COLUMNS": "200"}
    demo = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    try:
        started = 0
        for line in demo.stdout:
            started += line.startswith("agent ")
            if started == 3:
                break
        assert started == 3, "the demo never started its three agents"
        children = psutil.Process(demo.pid).children(recursive=True)

        demo.send_signal(signal.SIGTERM)
        demo.communicate(timeout=120)
        _stopped, alive = psutil.wait_procs(children, timeout=30)
    finally:
        if demo.poll() is None:
            demo.kill()

    assert demo.returncode != 0
    assert [child.pid for child in alive] == []
