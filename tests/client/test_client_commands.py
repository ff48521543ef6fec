"""The operator commands (``edgefleet devices``, ``deploy``, ``rollouts`` ...) as processes
against a real controller's HTTP API, with a real agent serving and reporting telemetry."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from http_fleet_support import HttpFleet, get_json, start_http_fleet

from edgefleet.client.commands import parse_since
from edgefleet.controller.api import HttpServer, create_app
from edgefleet.controller.api_tokens import ApiTokenStore
from edgefleet.controller.models import ApiTokenRole
from edgefleet.profiles import load_profile

pytestmark = pytest.mark.slow

DEVICE = "op-1"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpFleet]:
    fleet = start_http_fleet(tmp_path_factory.mktemp("operator"), devices={DEVICE: 50.0})
    yield fleet
    fleet.stop()


def edgefleet(
    *args: str,
    url: str | None,
    token: str | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float = 120,
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "edgefleet", *args]
    if url is not None:
        command += ["--controller-url", url]
    if token is not None:
        command += ["--token", token]
    environment = {**os.environ, "COLUMNS": "200"}
    # Only the test's own environment may name the controller and the token.
    environment.pop("EDGEFLEET_CONTROLLER_URL", None)
    environment.pop("EDGEFLEET_API_TOKEN", None)
    environment.update(env or {})
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout_s, env=environment, check=False
    )


def run_json(fleet: HttpFleet, *args: str) -> dict:
    result = edgefleet(*args, "--json", url=fleet.url, token=fleet.operator_token)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def api(fleet: HttpFleet, path: str) -> dict:
    return get_json(f"{fleet.url}/api/v1{path}", token=fleet.operator_token)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_devices_json_matches_api(fleet):
    listed = run_json(fleet, "devices")["devices"]
    assert [device["device_id"] for device in listed] == [DEVICE]
    assert listed[0]["profile_name"] == api(fleet, "/devices")["devices"][0]["profile_name"]
    assert listed[0]["online"] is True


def test_devices_table_shows_state_and_budget(fleet):
    result = edgefleet("devices", url=fleet.url, token=fleet.operator_token)
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if DEVICE in line)
    assert "online" in row
    assert "within" in row
    assert "/ 50.0" in row, "p95 against the budget"
    assert result.stderr == "", "no request log lines on stderr"


def test_device_shows_facts_ladder_and_deployments(fleet):
    result = edgefleet("device", DEVICE, url=fleet.url, token=fleet.operator_token)
    assert result.returncode == 0, result.stderr
    device = api(fleet, f"/devices/{DEVICE}")
    assert f"device {DEVICE}" in result.stdout
    assert f"{device['current_variant_id']} (serving)" in result.stdout
    assert "ladder of" in result.stdout
    assert "newest deployments" in result.stdout


def test_device_unknown_names_listing_command(fleet):
    result = edgefleet("device", "no-such-device", url=fleet.url, token=fleet.operator_token)
    assert result.returncode == 1
    assert "no-such-device" in result.stderr
    assert "`edgefleet devices` lists the registered devices" in result.stderr


def test_telemetry_since_returns_samples(fleet):
    history = run_json(fleet, "telemetry", DEVICE, "--since", "10m")
    assert history["device_id"] == DEVICE
    assert history["points"], "the agent reports every 0.5 s"
    assert any(point["requests"] > 0 for point in history["points"])

    table = edgefleet(
        "telemetry",
        DEVICE,
        "--since",
        "1m",
        "--step",
        "5",
        url=fleet.url,
        token=fleet.operator_token,
    )
    assert table.returncode == 0, table.stderr
    assert "5 s buckets" in table.stdout


def test_telemetry_rejects_bad_since(fleet):
    result = edgefleet(
        "telemetry", DEVICE, "--since", "yesterday", url=fleet.url, token=fleet.operator_token
    )
    assert result.returncode == 2
    assert "invalid time 'yesterday'" in result.stderr
    assert "10m" in result.stderr


def test_models_and_variants_list_active_model(fleet):
    models = run_json(fleet, "models")
    assert models["active_model_id"] == fleet.model_id

    variants = run_json(fleet, "variants")
    assert variants["model_id"] == fleet.model_id
    profile = variants["profiles"][0]
    # A unique prefix of the model id selects the model.
    table = edgefleet("variants", fleet.model_id[:6], url=fleet.url, token=fleet.operator_token)
    assert table.returncode == 0, table.stderr
    for variant in profile["variants"]:
        assert variant["variant_id"] in table.stdout


def test_deploy_by_prefix_waits_until_active(fleet):
    variants = api(fleet, f"/models/{fleet.model_id}/variants")["profiles"][0]["variants"]
    current = api(fleet, f"/devices/{DEVICE}")["current_variant_id"]
    target = next(v["variant_id"] for v in variants if v["variant_id"] != current)

    deployment = run_json(fleet, "deploy", DEVICE, target[:8], "--reason", "operator test")
    assert deployment["variant_id"] == target
    assert deployment["state"] == "active"
    assert api(fleet, f"/devices/{DEVICE}")["current_variant_id"] == target
    requested = api(fleet, f"/events?device_id={DEVICE}&kind=deploy_requested")["events"][-1]
    assert requested["reason"] == "operator test"


def test_deploy_unknown_variant_names_listing_command(fleet):
    result = edgefleet("deploy", DEVICE, "ffffffffffff", url=fleet.url, token=fleet.operator_token)
    assert result.returncode == 1
    assert "ffffffffffff" in result.stderr
    assert "edgefleet variants MODEL" in result.stderr


def test_pin_and_unpin(fleet):
    pinned = run_json(fleet, "pin", DEVICE)
    assert pinned["pinned"] is True
    assert api(fleet, f"/devices/{DEVICE}")["pinned"] is True

    unpinned = run_json(fleet, "unpin", DEVICE)
    assert unpinned["pinned"] is False
    assert api(fleet, f"/devices/{DEVICE}")["pinned"] is False


def test_events_lists_newest(fleet):
    page = run_json(fleet, "events", "--limit", "3")
    newest = api(fleet, "/events?limit=3")["events"]
    assert [event["id"] for event in page["events"]] == [event["id"] for event in newest]

    by_device = run_json(fleet, "events", "--device", DEVICE, "--kind", "registered")
    assert by_device["events"]
    assert {event["kind"] for event in by_device["events"]} == {"registered"}


def test_events_follow_prints_new_events(fleet):
    command = [
        sys.executable, "-m", "edgefleet", "events", "--follow", "--json", "--limit", "1",
        "--controller-url", fleet.url,
    ]  # fmt: skip
    env = {**os.environ, "EDGEFLEET_API_TOKEN": fleet.read_token}
    follower = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        first = json.loads(follower.stdout.readline())
        variant_id = fleet.controller.ladder(DEVICE)[0].variant_id
        fleet.controller.deploy(DEVICE, variant_id, reason="followed event")
        seen = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            event = json.loads(follower.stdout.readline())
            seen.append(event)
            if event["kind"] == "deploy_requested" and event["reason"] == "followed event":
                break
        else:
            pytest.fail(f"the follower printed no deploy_requested event, only {seen}")
        assert all(event["id"] > first["id"] for event in seen)
    finally:
        follower.terminate()
        follower.wait(timeout=10)
        follower.stdout.close()
        follower.stderr.close()


def test_rollout_start_pause_resume_abort(fleet):
    rollout = run_json(
        fleet,
        "rollouts", "start", "--target", f"devices:{DEVICE}", "--waves", "100%",
        "--model", fleet.model_id[:6], "--gate", "soak_s=600", "--gate", "min_samples=1",
    )  # fmt: skip
    rollout_id = rollout["rollout_id"]
    assert rollout["state"] == "running"
    assert rollout["model_id"] == fleet.model_id
    prefix = rollout_id[:8]

    listed = run_json(fleet, "rollouts", "list", "--state", "running")["rollouts"]
    assert rollout_id in [item["rollout_id"] for item in listed]
    assert run_json(fleet, "rollouts", "pause", prefix)["state"] == "paused"
    assert run_json(fleet, "rollouts", "resume", prefix)["state"] == "running"
    assert run_json(fleet, "rollouts", "abort", prefix)["state"] == "aborted"
    assert api(fleet, f"/rollouts/{rollout_id}")["state"] == "aborted"

    show_result = edgefleet("rollouts", "show", prefix, url=fleet.url, token=fleet.operator_token)
    assert show_result.returncode == 0, show_result.stderr
    assert f"rollout {rollout_id}: aborted" in show_result.stdout


def test_rollout_unknown_names_listing_command(fleet):
    result = edgefleet("rollouts", "pause", "0000000000", url=fleet.url, token=fleet.operator_token)
    assert result.returncode == 1
    assert "`edgefleet rollouts list` lists the rollouts" in result.stderr


def test_unreachable_controller_says_how_to_start_it():
    url = f"http://127.0.0.1:{free_port()}"
    result = edgefleet("devices", url=url)
    assert result.returncode == 1
    assert f"cannot reach the controller at {url}" in result.stderr
    assert f"edgefleet controller serve --http-port {url.rsplit(':', 1)[1]} " in result.stderr
    assert "EDGEFLEET_CONTROLLER_URL" in result.stderr


def test_controller_url_from_environment(fleet):
    env = {"EDGEFLEET_CONTROLLER_URL": fleet.url, "EDGEFLEET_API_TOKEN": fleet.read_token}
    result = edgefleet("devices", "--json", url=None, env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["devices"][0]["device_id"] == DEVICE


def test_missing_token_says_how_to_create_one(fleet):
    result = edgefleet("devices", url=fleet.url)

    assert result.returncode == 1
    assert "missing Authorization header" in result.stderr
    assert "--token or the EDGEFLEET_API_TOKEN environment variable" in result.stderr
    assert "edgefleet controller api-token create NAME" in result.stderr


def test_revoked_token_rejected(fleet):
    token = ApiTokenStore(fleet.controller.registry.database).create(
        "short-lived", role=ApiTokenRole.READ
    )
    assert edgefleet("devices", url=fleet.url, token=token.token).returncode == 0
    ApiTokenStore(fleet.controller.registry.database).revoke(token.token_id)

    result = edgefleet("devices", url=fleet.url, token=token.token)

    assert result.returncode == 1
    assert "revoked" in result.stderr
    assert token.token.split(".")[2] not in result.stderr


def test_read_token_on_write_asks_for_operator_token(fleet):
    result = edgefleet("unpin", DEVICE, url=fleet.url, token=fleet.read_token)

    assert result.returncode == 1
    assert "has the read role" in result.stderr
    assert "needs an operator token" in result.stderr
    assert "--role operator" in result.stderr


def test_token_with_spaces_is_rejected(fleet):
    result = edgefleet("devices", url=fleet.url, token="efa1 broken token")

    assert result.returncode == 2
    assert "invalid API token" in result.stderr


def test_invalid_controller_url_is_rejected():
    result = edgefleet("devices", url="127.0.0.1:8080")
    assert result.returncode == 2
    assert "invalid controller URL '127.0.0.1:8080'" in result.stderr
    assert "http://" in result.stderr


def test_parse_since_durations_and_times():
    now = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)
    assert parse_since("10m", now=now) == (now - timedelta(minutes=10)).isoformat()
    assert parse_since("2h", now=now) == (now - timedelta(hours=2)).isoformat()
    assert parse_since("1.5d", now=now) == (now - timedelta(hours=36)).isoformat()
    assert parse_since("2026-01-31T10:00:00") == "2026-01-31T10:00:00+00:00"
    assert parse_since("2026-01-31T10:00:00+02:00") == "2026-01-31T10:00:00+02:00"


def test_commands_module_imports_no_httpx_or_rich():
    code = (
        "import sys, edgefleet.cli; print(sorted(m for m in ('httpx', 'rich') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


def test_register_uploads_model_and_data(fleet):
    model = fleet.workdir / "digits_mlp.onnx"
    data = fleet.workdir / "digits.npz"

    # The same file again: the controller returns the model it already has.
    registered = run_json(fleet, "register", str(model), "--data", str(data))
    table = edgefleet(
        "register", str(model), "--data", str(data), url=fleet.url, token=fleet.operator_token
    )

    assert registered["model_id"] == fleet.model_id
    assert table.returncode == 0, table.stderr
    assert f"registered model {fleet.model_id}" in table.stdout


def test_register_rejects_missing_and_broken_files(fleet, tmp_path):
    data = fleet.workdir / "digits.npz"
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf")

    missing = edgefleet(
        "register",
        str(tmp_path / "none.onnx"),
        "--data",
        str(data),
        url=fleet.url,
        token=fleet.operator_token,
    )
    rejected = edgefleet(
        "register", str(broken), "--data", str(data), url=fleet.url, token=fleet.operator_token
    )

    assert missing.returncode == 2
    assert "none.onnx" in missing.stderr
    assert "not found" in missing.stderr
    assert rejected.returncode == 1
    assert "not a valid ONNX model" in rejected.stderr
    assert "Traceback" not in rejected.stderr
    assert api(fleet, "/models")["active_model_id"] == fleet.model_id


class LineReader:
    """Reads a process's stream on a thread, so a test can wait for a line with a timeout."""

    def __init__(self, stream) -> None:
        self._lines: queue.Queue[str] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self._lines.put(line)

    def next(self, timeout_s: float = 30) -> str:
        try:
            return self._lines.get(timeout=timeout_s)
        except queue.Empty:
            pytest.fail(f"no line within {timeout_s} s")


def test_events_follow_retries_while_controller_is_down(fleet):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable, "-m", "edgefleet", "events", "--follow", "--json", "--limit", "1",
        "--controller-url", url,
    ]  # fmt: skip
    env = {**os.environ, "EDGEFLEET_API_TOKEN": fleet.read_token}
    follower = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    out, err = LineReader(follower.stdout), LineReader(follower.stderr)
    server = HttpServer(create_app(fleet.controller), port=port)
    try:
        warning = err.next()
        assert f"the controller at {url} does not respond" in warning
        assert "retrying" in warning
        assert follower.poll() is None

        server.start()
        first = json.loads(out.next())
        assert "responds again" in err.next()

        # A controller stop while the long poll is open: the follower keeps going.
        server.stop()
        assert "does not respond" in err.next()
        variant_id = fleet.controller.ladder(DEVICE)[0].variant_id
        fleet.controller.deploy(DEVICE, variant_id, reason="deployed while away")
        server = HttpServer(create_app(fleet.controller), port=port)
        server.start()
        seen = [json.loads(out.next())]
        while seen[-1]["reason"] != "deployed while away":
            seen.append(json.loads(out.next()))
        assert all(event["id"] > first["id"] for event in seen)
        assert follower.poll() is None

        follower.send_signal(signal.SIGINT)
        assert follower.wait(timeout=10) == 0
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait(timeout=10)
        server.stop()
        follower.stdout.close()
        follower.stderr.close()


@pytest.mark.parametrize("value", ["inf", "nan", "1e400", "-inf"])
def test_rollout_start_rejects_non_finite_gate(value):
    # Nothing listens on this URL: a request would fail with "cannot reach".
    url = f"http://127.0.0.1:{free_port()}"
    result = edgefleet("rollouts", "start", "--gate", f"soak_s={value}", url=url)

    assert result.returncode == 2, result.stderr
    assert f"invalid --gate soak_s='{value}': the value must be a finite number" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("rollouts", "show", ""), "the rollout id is empty"),
        (("rollouts", "abort", " "), "the rollout id is empty"),
        (("pin", ""), "invalid device id ''"),
        (("device", "pi-a/../pi-b"), "invalid device id 'pi-a/../pi-b'"),
        (("deploy", "op-1", ""), "the variant id is empty"),
        (("variants", " "), "the model id is empty"),
        (("rollouts", "start", "--model", ""), "the model id is empty"),
        (("events", "--device", ""), "invalid device id ''"),
    ],
)
def test_empty_and_invalid_ids_rejected(args, words):
    url = f"http://127.0.0.1:{free_port()}"
    result = edgefleet(*args, url=url)

    assert result.returncode == 2, result.stderr
    assert words in result.stderr
    assert "cannot reach" not in result.stderr


def test_events_limit_zero_names_the_option(fleet):
    result = edgefleet("events", "--limit", "0", url=fleet.url, token=fleet.read_token)

    assert result.returncode == 2
    assert "--limit" in result.stderr
    assert "query parameter" not in result.stderr


def test_register_directory_says_it_is_one(fleet):
    data = fleet.workdir / "digits.npz"
    result = edgefleet(
        "register", str(fleet.workdir), "--data", str(data),
        url=fleet.url, token=fleet.operator_token,
    )  # fmt: skip

    assert result.returncode == 2
    assert f"MODEL '{fleet.workdir}' is a directory" in result.stderr


@pytest.mark.parametrize(
    ("waves", "words"),
    [("1,,100%", "wave 2 of '1,,100%' is empty"), ("100%,1", "waves must increase")],
)
def test_rollout_start_rejects_empty_and_decreasing_waves(fleet, waves, words):
    result = edgefleet(
        "rollouts", "start", "--target", f"devices:{DEVICE}", "--waves", waves,
        url=fleet.url, token=fleet.operator_token,
    )  # fmt: skip

    assert result.returncode == 1
    assert words in result.stderr
    assert run_json(fleet, "rollouts", "list", "--state", "running")["rollouts"] == []


def current_variant(fleet: HttpFleet) -> tuple[str, str]:
    device = api(fleet, f"/devices/{DEVICE}")
    return device["profile_name"], device["current_variant_id"]


def test_rollout_start_notes_a_canary_that_changes_nothing(fleet):
    profile, variant = current_variant(fleet)
    result = edgefleet(
        "rollouts", "start", "--target", f"devices:{DEVICE}", "--waves", "100%",
        "--variant", f"{profile}={variant}", "--gate", "soak_s=0", "--wait", "--timeout", "60",
        url=fleet.url, token=fleet.operator_token,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert "1 target device(s), 0 of them offline" in result.stdout
    assert "every device of the first wave already serves its target variant" in result.stdout


def test_rollout_wait_timeout_and_reasons(fleet):
    profile, variant = current_variant(fleet)
    result = edgefleet(
        "rollouts", "start", "--target", f"devices:{DEVICE}", "--waves", "100%",
        "--variant", f"{profile}={variant}", "--gate", "soak_s=600", "--wait", "--timeout", "2",
        url=fleet.url, token=fleet.operator_token,
    )  # fmt: skip
    rollout_id = run_json(fleet, "rollouts", "list", "--state", "running")["rollouts"][0][
        "rollout_id"
    ]

    assert result.returncode == 1
    assert "--wait timed out after 2 s" in result.stderr
    assert f"rollout {rollout_id} is still running and keeps going" in result.stderr

    paused = run_json(fleet, "rollouts", "pause", rollout_id, "--reason", "checking the canary")
    aborted = run_json(fleet, "rollouts", "abort", rollout_id, "--reason", "wrong model")
    assert (paused["state"], aborted["state"]) == ("paused", "aborted")
    reasons = {
        event["kind"]: event["reason"]
        for event in api(fleet, "/events?kind=rollout_paused&kind=rollout_aborted&limit=10")[
            "events"
        ]
    }
    assert reasons["rollout_paused"] == "checking the canary"
    assert "wrong model" in reasons["rollout_aborted"]


# Registers a device that never connects, so it runs last in this module.
def test_rollout_start_warns_about_offline_devices(fleet):
    profile = load_profile(fleet.workdir / f"{DEVICE}.toml")
    fleet.controller.registry.register_device("op-gone", profile)
    target = f"devices:{DEVICE},op-gone"

    started = edgefleet(
        "rollouts", "start", "--target", target, "--waves", "1,100%", "--gate", "soak_s=600",
        url=fleet.url, token=fleet.operator_token,
    )  # fmt: skip
    first = run_json(fleet, "rollouts", "list", "--state", "running")["rollouts"][0]
    run_json(fleet, "rollouts", "abort", first["rollout_id"])
    online = edgefleet(
        "rollouts", "start", "--target", target, "--waves", "100%", "--online-only",
        "--gate", "soak_s=600", url=fleet.url, token=fleet.operator_token,
    )  # fmt: skip
    online_id = run_json(fleet, "rollouts", "list", "--state", "running")["rollouts"][0]
    run_json(fleet, "rollouts", "abort", online_id["rollout_id"])

    assert started.returncode == 0, started.stderr
    assert "warning: 1 target device(s) are offline: op-gone" in started.stderr
    assert "within deploy_timeout_s (600 s) fails its wave" in started.stderr
    assert "2 target device(s), 1 of them offline" in started.stdout
    assert online.returncode == 0, online.stderr
    assert "offline" not in online.stderr
    assert "1 offline device(s) left out: op-gone" in online.stdout
    assert [device["device_id"] for device in online_id["devices"]] == [DEVICE]
