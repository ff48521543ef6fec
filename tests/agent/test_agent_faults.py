"""Fault injection: cut transfers, killed agents, corrupt artifacts, replayed and expired
manifests, and a device clock at 1970. Every test ends by checking that the device serves
a model whose file matches its committed digest."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import grpc
import pytest
from agent_support import FleetServicer, build_affine_model, build_manifest, wait_for
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fault_support import HOUR_MS, BlackholeProxy, build_slow_variant, sign_command, trust_key

from edgefleet.agent.daemon import Agent, AgentConfig
from edgefleet.agent.download import fetch_artifact, verify_artifact
from edgefleet.agent.errors import ControllerUnavailable
from edgefleet.agent.mqtt_artifacts import ChunkFetcher
from edgefleet.agent.store import AgentStore
from edgefleet.agent.update import UpdateState
from edgefleet.protos.v1 import fleet_pb2, fleet_pb2_grpc

ACTIVE = fleet_pb2.DEPLOYMENT_STATE_ACTIVE
FAILED = fleet_pb2.DEPLOYMENT_STATE_FAILED
ROLLED_BACK = fleet_pb2.DEPLOYMENT_STATE_ROLLED_BACK
FINAL = (ACTIVE, FAILED, ROLLED_BACK)
CUT_ARTIFACT_BYTES = 64 * 1024
CUT_CHUNK_BYTES = 4096
CUTS = 100


class CuttingServicer(FleetServicer):
    """Serves artifacts in small chunks; can cut one transfer at a byte or corrupt it."""

    def __init__(self) -> None:
        super().__init__()
        self.cut_at: int | None = None
        self.corrupt_downloads = 0

    def DownloadArtifact(self, request, context):
        with self.lock:
            self.download_requests.append(request)
            data = self.artifacts.get(request.sha256)
            cut_at, self.cut_at = self.cut_at, None
            corrupt = self.corrupt_downloads > 0
            self.corrupt_downloads -= 1 if corrupt else 0
        if data is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown artifact {request.sha256}")
        if corrupt:
            flipped = bytearray(data)
            flipped[len(data) // 2] ^= 0xFF
            data = bytes(flipped)
        for start in range(request.offset, len(data), CUT_CHUNK_BYTES):
            end = min(start + CUT_CHUNK_BYTES, len(data))
            if cut_at is not None and start <= cut_at < end:
                if cut_at > start:
                    yield self._chunk(request.sha256, data, start, cut_at)
                context.abort(grpc.StatusCode.UNAVAILABLE, f"connection cut at byte {cut_at}")
            yield self._chunk(request.sha256, data, start, end)

    @staticmethod
    def _chunk(sha256: str, data: bytes, start: int, end: int) -> fleet_pb2.ArtifactChunk:
        return fleet_pb2.ArtifactChunk(
            sha256=sha256, offset=start, total_size=len(data), data=data[start:end]
        )


@pytest.fixture
def cutting_fleet():
    from agent_support import FleetServer

    server = FleetServer()
    server.servicer = CuttingServicer()
    server.start()
    yield server
    server.stop()


def cut_offsets(size: int) -> list[int]:
    rng = random.Random(20261204)
    return sorted(rng.randrange(1, size) for _ in range(CUTS))


# -- transfers cut at any byte ------------------------------------------------------------


def test_grpc_transfer_resumes_at_every_cut(cutting_fleet, tmp_path):
    data = random.Random(1).randbytes(CUT_ARTIFACT_BYTES)
    sha256 = hashlib.sha256(data).hexdigest()
    cutting_fleet.servicer.artifacts[sha256] = data
    channel = grpc.insecure_channel(cutting_fleet.target)
    stub = fleet_pb2_grpc.FleetServiceStub(channel)

    for number, offset in enumerate(cut_offsets(len(data))):
        part = tmp_path / f"{number}.part"
        cutting_fleet.servicer.cut_at = offset
        with pytest.raises(ControllerUnavailable):
            fetch_artifact(stub, part, device_id="pi-0001", sha256=sha256, size_bytes=len(data))
        assert part.stat().st_size == offset, f"cut at {offset}"

        fetch_artifact(stub, part, device_id="pi-0001", sha256=sha256, size_bytes=len(data))
        verify_artifact(part, sha256=sha256, size_bytes=len(data))
        assert cutting_fleet.servicer.download_requests[-1].offset == offset
    channel.close()


def _serve_chunks(fetcher_box: list, data: bytes, sha256: str, cut_at: int | None):
    """Return a publish function that serves chunk requests as the controller does."""
    lost = threading.Event()

    def publish(request: fleet_pb2.ArtifactRequest) -> None:
        fetcher = fetcher_box[0]
        start = request.offset
        end = min(start + request.chunk_size, len(data))
        if lost.is_set():
            return
        if cut_at is not None and start <= cut_at < end:
            if cut_at > start:
                end = cut_at
                chunk = data[start:end]
                fetcher.deliver(_mqtt_chunk(sha256, data, start, chunk), None)
            lost.set()
            fetcher.wake()
            return
        fetcher.deliver(_mqtt_chunk(sha256, data, start, data[start:end]), None)

    return publish, lost


def _mqtt_chunk(sha256: str, data: bytes, start: int, chunk: bytes) -> bytes:
    return fleet_pb2.ArtifactChunk(
        sha256=sha256, offset=start, total_size=len(data), data=chunk, crc32=zlib.crc32(chunk)
    ).SerializeToString()


def test_mqtt_transfer_resumes_at_every_cut(tmp_path):
    data = random.Random(2).randbytes(CUT_ARTIFACT_BYTES)
    sha256 = hashlib.sha256(data).hexdigest()

    for number, offset in enumerate(cut_offsets(len(data))):
        part = tmp_path / f"{number}.part"
        for cut_at in (offset, None):
            box: list = []
            publish, lost = _serve_chunks(box, data, sha256, cut_at)
            box.append(
                ChunkFetcher(
                    publish_request=publish,
                    connection_lost=lost,
                    lost_message=lambda: "broker connection lost",
                    chunk_bytes=CUT_CHUNK_BYTES,
                    chunk_timeout_s=2.0,
                )
            )
            fetch = box[0].fetch
            if cut_at is None:
                fetch(part, device_id="pi-0001", sha256=sha256, size_bytes=len(data))
                continue
            with pytest.raises(ControllerUnavailable):
                fetch(part, device_id="pi-0001", sha256=sha256, size_bytes=len(data))
            # Chunks after the cut may have arrived too, so the part is at least that long.
            assert part.stat().st_size >= offset, f"cut at {offset}"
        verify_artifact(part, sha256=sha256, size_bytes=len(data))


# -- an agent in a thread, and a subprocess killed in each state --------------------------


def agent_settings(target: str, state_dir: Path, profile_data: dict) -> dict:
    return {
        "controller": target,
        "device_id": "pi-0001",
        "profile": profile_data,
        "state_dir": str(state_dir),
        "telemetry_interval_s": 0.2,
        "reconnect_initial_s": 0.1,
        "reconnect_max_s": 0.5,
        "calibration_duration_s": 0.05,
    }


PROFILE = {
    "name": "test-board",
    "cpu_arch": "x86_64",
    "cpu_cores": 2,
    "cpu_flags": ["avx2"],
    "memory_mb": 1024,
    "model_memory_budget_mb": 128,
    "latency_budget_ms": 50.0,
    "inference_threads": 1,
}
# No model runs in a nanosecond, so under this profile every model is over budget and a
# health check fails any model slower than the one it replaces.
TOO_FAST_PROFILE = {**PROFILE, "latency_budget_ms": 1e-6}


def publish_slow(fleet) -> fleet_pb2.VariantManifest:
    data, manifest = build_slow_variant()
    fleet.servicer.artifacts[manifest.sha256] = data
    return manifest


class ThreadAgent:
    def __init__(self, settings: dict, **kwargs) -> None:
        from edgefleet.profiles import parse_profile

        config = AgentConfig(**{**settings, "profile": parse_profile(settings["profile"])})
        self.agent = Agent(config, **kwargs)
        self.thread = threading.Thread(target=self.agent.run, name="agent-under-test")
        self.thread.start()

    def stop(self) -> None:
        self.agent.stop()
        self.thread.join(timeout=20)
        assert not self.thread.is_alive()


@pytest.fixture
def agents():
    running: list[ThreadAgent] = []

    def start(settings: dict, **kwargs) -> ThreadAgent:
        agent = ThreadAgent(settings, **kwargs)
        running.append(agent)
        return agent

    yield start
    for agent in running:
        if agent.thread.is_alive():
            agent.stop()


def publish(fleet, scale: float, bias: float) -> fleet_pb2.VariantManifest:
    data = build_affine_model(scale, bias)
    manifest = build_manifest(data, scale=scale, bias=bias)
    fleet.servicer.artifacts[manifest.sha256] = data
    return manifest


def preinstall(state_dir: Path, scale: float, bias: float) -> fleet_pb2.VariantManifest:
    """Install and commit a model, as an earlier deployment would have."""
    data = build_affine_model(scale, bias)
    manifest = build_manifest(data, scale=scale, bias=bias)
    store = AgentStore(state_dir)
    staged = state_dir / "staged.onnx"
    staged.write_bytes(data)
    store.install(manifest, staged)
    store.commit(manifest.sha256)
    return manifest


def command(command_id: str, deploy: fleet_pb2.DeployCommand) -> fleet_pb2.Command:
    return fleet_pb2.Command(command_id=command_id, deploy=deploy)


def deploy_of(manifest, deployment_id: str = "dep-1") -> fleet_pb2.DeployCommand:
    return fleet_pb2.DeployCommand(deployment_id=deployment_id, manifest=manifest)


def final_statuses(fleet, deployment_id: str) -> list[fleet_pb2.DeploymentStatus]:
    return [
        status
        for status in fleet.servicer.of_kind("status")
        if status.deployment_id == deployment_id and status.state in FINAL
    ]


def assert_serves_verified(agent: Agent, expected: fleet_pb2.VariantManifest) -> None:
    """The agent serves ``expected``, committed, from a file that matches its digest."""
    current = agent.runtime.current
    assert current is not None, "no model serves"
    assert current.variant_id == expected.variant_id
    assert agent.store.state.current == expected.sha256
    data = agent.store.model_path(expected.sha256).read_bytes()
    assert hashlib.sha256(data).hexdigest() == expected.sha256
    import numpy as np

    result = agent.runtime.infer({"x": np.ones((1, 4), dtype=np.float32)})
    assert result.variant_id == expected.variant_id


# State killed in -> (final status after the restart, True if the new model ends serving).
KILL_CASES = {
    UpdateState.PENDING: (ACTIVE, True),
    UpdateState.DOWNLOADING: (ACTIVE, True),
    UpdateState.VERIFYING: (ACTIVE, True),
    UpdateState.INSTALLING: (ACTIVE, True),
    UpdateState.LOADING: (FAILED, False),
    UpdateState.HEALTH_CHECK: (ROLLED_BACK, False),
    UpdateState.ROLLING_BACK: (ROLLED_BACK, False),
    UpdateState.ACTIVE: (None, True),
}


@pytest.mark.parametrize("state", list(KILL_CASES), ids=lambda state: state.value)
def test_agent_killed_in_each_state_ends_on_verified_model(fleet, agents, tmp_path, state):
    state_dir = tmp_path / "state"
    old = preinstall(state_dir, 2.0, 1.0)
    rolls_back = state is UpdateState.ROLLING_BACK
    new = publish_slow(fleet) if rolls_back else publish(fleet, 3.0, 0.5)
    profile = TOO_FAST_PROFILE if rolls_back else PROFILE
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(agent_settings(fleet.target, state_dir, profile)))
    support = Path(__file__).with_name("fault_support.py")
    process = subprocess.Popen(
        [sys.executable, str(support), str(config_path), state.value],
        cwd=Path(__file__).parent,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)},
    )
    try:
        wait_for(lambda: fleet.servicer.open_sessions, timeout_s=30, description="session")
        fleet.servicer.send(command("cmd-1", deploy_of(new)))
        process.wait(timeout=30)
    finally:
        process.kill()
    assert process.returncode == -9, "the agent was not killed in the state"
    wait_for(lambda: not fleet.servicer.open_sessions, description="session closed")

    expected_final, new_serves = KILL_CASES[state]
    finals_before = len(final_statuses(fleet, "dep-1"))
    restarted = agents(agent_settings(fleet.target, state_dir, PROFILE))
    wait_for(lambda: restarted.agent.connected.is_set(), description="reconnect")
    if expected_final is not None:
        wait_for(
            lambda: len(final_statuses(fleet, "dep-1")) > finals_before,
            timeout_s=20,
            description="final status after the restart",
        )
        assert final_statuses(fleet, "dep-1")[-1].state == expected_final
    assert_serves_verified(restarted.agent, new if new_serves else old)
    assert (
        restarted.agent.store.state.update is None
        or restarted.agent.store.state.update.state.terminal
    )


# -- corrupt artifacts --------------------------------------------------------------------


def test_corrupt_artifact_is_fetched_again(cutting_fleet, agents, tmp_path):
    state_dir = tmp_path / "state"
    preinstall(state_dir, 2.0, 1.0)
    new = publish(cutting_fleet, 3.0, 0.5)
    cutting_fleet.servicer.corrupt_downloads = 1
    running = agents(agent_settings(cutting_fleet.target, state_dir, PROFILE))
    wait_for(lambda: cutting_fleet.servicer.open_sessions, description="session")

    cutting_fleet.servicer.send(command("cmd-1", deploy_of(new)))
    wait_for(lambda: final_statuses(cutting_fleet, "dep-1"), description="final status")

    assert final_statuses(cutting_fleet, "dep-1")[-1].state == ACTIVE
    assert [r.offset for r in cutting_fleet.servicer.download_requests] == [0, 0]
    assert_serves_verified(running.agent, new)


def test_always_corrupt_artifact_fails_and_keeps_model(cutting_fleet, agents, tmp_path):
    state_dir = tmp_path / "state"
    old = preinstall(state_dir, 2.0, 1.0)
    new = publish(cutting_fleet, 3.0, 0.5)
    cutting_fleet.servicer.corrupt_downloads = 100
    running = agents(agent_settings(cutting_fleet.target, state_dir, PROFILE))
    wait_for(lambda: cutting_fleet.servicer.open_sessions, description="session")

    cutting_fleet.servicer.send(command("cmd-1", deploy_of(new)))
    wait_for(lambda: final_statuses(cutting_fleet, "dep-1"), description="final status")

    status = final_statuses(cutting_fleet, "dep-1")[-1]
    assert status.state == FAILED
    assert "sha256 mismatch" in status.message
    assert "gave up after 2 fresh downloads" in status.message
    assert_serves_verified(running.agent, old)
    assert not AgentStore(state_dir).part_path(new.sha256).exists()


def test_failed_health_check_rolls_back(fleet, agents, tmp_path):
    state_dir = tmp_path / "state"
    old = preinstall(state_dir, 2.0, 1.0)
    new = publish_slow(fleet)
    running = agents(agent_settings(fleet.target, state_dir, TOO_FAST_PROFILE))
    wait_for(lambda: fleet.servicer.open_sessions, description="session")

    fleet.servicer.send(command("cmd-1", deploy_of(new)))
    wait_for(lambda: final_statuses(fleet, "dep-1"), description="final status")

    status = final_statuses(fleet, "dep-1")[-1]
    assert status.state == ROLLED_BACK
    assert "exceeds the device's budget" in status.message
    assert f"previous variant {old.variant_id} is faster" in status.message
    assert_serves_verified(running.agent, old)


def test_over_budget_but_faster_model_kept(fleet, agents, tmp_path):
    state_dir = tmp_path / "state"
    data, slow = build_slow_variant()
    staged = tmp_path / "slow.onnx"
    staged.write_bytes(data)
    store = AgentStore(state_dir)
    store.install(slow, staged)
    store.commit(slow.sha256)
    new = publish(fleet, 3.0, 0.5)
    # Every model is over this budget, as under heavy CPU contention: stepping down to a
    # faster model must not be undone.
    running = agents(agent_settings(fleet.target, state_dir, TOO_FAST_PROFILE))
    wait_for(lambda: fleet.servicer.open_sessions, description="session")

    fleet.servicer.send(command("cmd-1", deploy_of(new)))
    wait_for(lambda: final_statuses(fleet, "dep-1"), description="final status")

    assert final_statuses(fleet, "dep-1")[-1].state == ACTIVE
    assert_serves_verified(running.agent, new)


# -- signed manifests: replay, expiry and a clock at 1970 ---------------------------------


@pytest.fixture
def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def test_replayed_older_manifest_rejected(fleet, agents, tmp_path, signing_key):
    state_dir = tmp_path / "state"
    trust_key(state_dir, signing_key)
    older = publish(fleet, 2.0, 1.0)
    newer = publish(fleet, 3.0, 0.5)
    running = agents(agent_settings(fleet.target, state_dir, PROFILE))
    wait_for(lambda: fleet.servicer.open_sessions, description="session")
    sign = dict(key=signing_key, device_id="pi-0001")
    replay = sign_command(manifest=older, deployment_id="dep-1", version=1, **sign)
    fleet.servicer.send(
        command("cmd-2", sign_command(manifest=newer, deployment_id="dep-2", version=2, **sign))
    )
    wait_for(lambda: final_statuses(fleet, "dep-2"), description="version 2 final")

    fleet.servicer.send(command("cmd-1", replay))
    wait_for(lambda: final_statuses(fleet, "dep-1"), description="replay final")

    assert final_statuses(fleet, "dep-2")[-1].state == ACTIVE
    status = final_statuses(fleet, "dep-1")[-1]
    assert status.state == FAILED
    assert "version_backwards" in status.message
    assert_serves_verified(running.agent, newer)


def test_expired_manifest_rejected(fleet, agents, tmp_path, signing_key):
    state_dir = tmp_path / "state"
    trust_key(state_dir, signing_key)
    old = preinstall(state_dir, 2.0, 1.0)
    new = publish(fleet, 3.0, 0.5)
    running = agents(agent_settings(fleet.target, state_dir, PROFILE))
    wait_for(lambda: fleet.servicer.open_sessions, description="session")
    issued = int(time.time() * 1000) - 2 * HOUR_MS
    expired = sign_command(
        signing_key,
        new,
        device_id="pi-0001",
        deployment_id="dep-1",
        version=1,
        issued_at_ms=issued,
        expires_at_ms=issued + HOUR_MS,
    )

    fleet.servicer.send(command("cmd-1", expired))
    wait_for(lambda: final_statuses(fleet, "dep-1"), description="final status")

    status = final_statuses(fleet, "dep-1")[-1]
    assert status.state == FAILED
    assert "expired" in status.message
    assert_serves_verified(running.agent, old)


def test_device_clock_at_1970(fleet, agents, tmp_path, signing_key):
    state_dir = tmp_path / "state"
    trust_key(state_dir, signing_key)
    first = publish(fleet, 2.0, 1.0)
    second = publish(fleet, 3.0, 0.5)
    running = agents(agent_settings(fleet.target, state_dir, PROFILE), clock=lambda: 0.0)
    wait_for(lambda: fleet.servicer.open_sessions, description="session")
    sign = dict(key=signing_key, device_id="pi-0001")

    # A fresh manifest deploys although the device believes it is 1970.
    fleet.servicer.send(
        command("cmd-1", sign_command(manifest=first, deployment_id="dep-1", version=1, **sign))
    )
    wait_for(lambda: final_statuses(fleet, "dep-1"), description="first final")
    assert final_statuses(fleet, "dep-1")[-1].state == ACTIVE

    # One that expired before the first was issued stays expired: the accepted manifest's
    # issue time is the floor under the device clock.
    issued = int(time.time() * 1000) - 2 * HOUR_MS
    stale = sign_command(
        manifest=second,
        deployment_id="dep-2",
        version=2,
        issued_at_ms=issued,
        expires_at_ms=issued + HOUR_MS,
        **sign,
    )
    fleet.servicer.send(command("cmd-2", stale))
    wait_for(lambda: final_statuses(fleet, "dep-2"), description="stale final")

    status = final_statuses(fleet, "dep-2")[-1]
    assert status.state == FAILED
    assert "expired" in status.message
    assert_serves_verified(running.agent, first)

    # Telemetry carries controller-corrected timestamps, not 1970.
    wait_for(lambda: len(fleet.servicer.of_kind("telemetry")) >= 2, description="telemetry")
    now_ms = time.time() * 1000
    for sample in fleet.servicer.of_kind("telemetry"):
        assert abs(sample.sampled_at_ms - now_ms) < 60_000, sample.sampled_at_ms
    assert running.agent.clock_offset_ms > 1_700_000_000_000


# -- reconnects ---------------------------------------------------------------------------


def test_agent_keeps_reconnecting_until_controller_appears(agents, tmp_path):
    from agent_support import FleetServer

    server = FleetServer()
    server.start()
    port = server.port
    server.stop()
    settings = agent_settings(f"127.0.0.1:{port}", tmp_path / "state", PROFILE)
    running = agents({**settings, "reconnect_initial_s": 0.05, "reconnect_max_s": 0.1})

    # About 30 failed attempts at this backoff: the agent must still be trying.
    time.sleep(3.0)
    assert not running.agent.connected.is_set()
    server.start()
    try:
        wait_for(lambda: running.agent.connected.is_set(), description="late connection")
        wait_for(lambda: server.servicer.of_kind("telemetry"), description="backlog sent")
        first = min(sample.seq for sample in server.servicer.of_kind("telemetry"))
        # Samples taken while the controller was absent arrive first.
        assert first == 1
    finally:
        server.stop()


def test_half_open_connection_detected_and_resent(fleet, agents, tmp_path):
    proxy = BlackholeProxy(fleet.port)
    settings = agent_settings(f"127.0.0.1:{proxy.port}", tmp_path / "state", PROFILE)
    running = agents(settings)
    wait_for(lambda: len(fleet.servicer.of_kind("telemetry")) >= 3, description="telemetry")

    # Traffic stops but the connection stays open: only keepalive can notice.
    proxy.cut()
    cut_at = time.monotonic()
    wait_for(lambda: not running.agent.connected.is_set(), timeout_s=45, description="detection")
    detected_s = time.monotonic() - cut_at
    proxy.restore()
    wait_for(lambda: running.agent.connected.is_set(), timeout_s=20, description="reconnect")
    reconnected_ms = time.time() * 1000
    wait_for(
        lambda: any(s.sampled_at_ms > reconnected_ms for s in fleet.servicer.of_kind("telemetry")),
        timeout_s=20,
        description="backlog sent",
    )

    assert detected_s < 35, f"half-open connection noticed after {detected_s:.1f} s"
    samples = fleet.servicer.of_kind("telemetry")
    last = min(s.seq for s in samples if s.sampled_at_ms > reconnected_ms)
    received = {s.seq for s in samples}
    missing = sorted(set(range(1, last + 1)) - received)
    assert missing == [], f"samples lost in the half-open connection: {missing}"


# -- full disk ----------------------------------------------------------------------------

needs_dev_full = pytest.mark.skipif(
    not Path("/dev/full").exists(), reason="needs /dev/full to produce ENOSPC"
)


@needs_dev_full
def test_full_disk_fails_deployment_and_keeps_model(fleet, agents, tmp_path):
    state_dir = tmp_path / "state"
    old = preinstall(state_dir, 2.0, 1.0)
    new = publish(fleet, 3.0, 0.5)
    # Writes to /dev/full fail with ENOSPC, as on a full disk.
    AgentStore(state_dir).part_path(new.sha256).symlink_to("/dev/full")
    running = agents(agent_settings(fleet.target, state_dir, PROFILE))
    wait_for(lambda: fleet.servicer.open_sessions, description="session")

    fleet.servicer.send(command("cmd-1", deploy_of(new)))
    wait_for(lambda: final_statuses(fleet, "dep-1"), description="final status")

    status = final_statuses(fleet, "dep-1")[-1]
    assert status.state == FAILED
    assert "no space left on device" in status.message
    assert str(state_dir / "downloads") in status.message
    assert_serves_verified(running.agent, old)
    assert running.thread.is_alive()


@needs_dev_full
def test_mqtt_transfer_full_disk_raises_storage_error(tmp_path):
    from edgefleet.agent.errors import StorageError

    data = random.Random(3).randbytes(CUT_ARTIFACT_BYTES)
    sha256 = hashlib.sha256(data).hexdigest()
    part = tmp_path / f"{sha256}.part"
    part.symlink_to("/dev/full")
    box: list = []
    publish_request, lost = _serve_chunks(box, data, sha256, None)
    box.append(
        ChunkFetcher(
            publish_request=publish_request,
            connection_lost=lost,
            lost_message=lambda: "broker connection lost",
            chunk_bytes=CUT_CHUNK_BYTES,
        )
    )

    with pytest.raises(StorageError, match="no space left on device"):
        box[0].fetch(part, device_id="pi-0001", sha256=sha256, size_bytes=len(data))

    assert not part.is_symlink()


# -- damaged state on disk ----------------------------------------------------------------


def test_garbage_outbox_moved_aside(fleet, agents, tmp_path, caplog):
    state_dir = tmp_path / "state"
    old = preinstall(state_dir, 2.0, 1.0)
    outbox_path = state_dir / "outbox.sqlite3"
    garbage = random.Random(3).randbytes(8192)
    outbox_path.write_bytes(garbage)

    with caplog.at_level("WARNING", logger="edgefleet.agent.outbox"):
        running = agents(agent_settings(fleet.target, state_dir, PROFILE))
        wait_for(lambda: fleet.servicer.of_kind("telemetry"), description="telemetry")

    assert_serves_verified(running.agent, old)
    [aside] = state_dir.glob("outbox.sqlite3.corrupt-*Z")
    assert aside.read_bytes() == garbage
    [warning] = [r.getMessage() for r in caplog.records if "backlog" in r.getMessage()]
    assert str(outbox_path) in warning
    assert str(aside) in warning
    assert "cannot tell how many unsent samples" in warning
    assert fleet.servicer.of_kind("telemetry")[0].dropped_samples == 0


def test_outbox_of_wrong_schema_counts_lost_samples(fleet, agents, tmp_path, caplog):
    import sqlite3

    state_dir = tmp_path / "state"
    old = preinstall(state_dir, 2.0, 1.0)
    outbox_path = state_dir / "outbox.sqlite3"
    # A valid database whose backlog lacks the in_flight column, holding 4 unsent samples.
    db = sqlite3.connect(outbox_path)
    db.execute("CREATE TABLE backlog (id INTEGER PRIMARY KEY, seq INTEGER, body BLOB)")
    db.executemany("INSERT INTO backlog (seq, body) VALUES (?, x'00')", [(n,) for n in range(4)])
    db.commit()
    db.close()

    with caplog.at_level("WARNING", logger="edgefleet.agent.outbox"):
        running = agents(agent_settings(fleet.target, state_dir, PROFILE))
        wait_for(lambda: fleet.servicer.of_kind("telemetry"), description="telemetry")

    assert_serves_verified(running.agent, old)
    assert len(list(state_dir.glob("outbox.sqlite3.corrupt-*Z"))) == 1
    [warning] = [r.getMessage() for r in caplog.records if "backlog" in r.getMessage()]
    assert "4 unsent samples counted as dropped" in warning
    assert fleet.servicer.of_kind("telemetry")[0].dropped_samples == 4


def test_truncated_model_falls_back_to_previous(fleet, agents, tmp_path):
    state_dir = tmp_path / "state"
    old = preinstall(state_dir, 2.0, 1.0)
    new = preinstall(state_dir, 3.0, 0.5)
    new_path = AgentStore(state_dir).model_path(new.sha256)
    new_path.write_bytes(new_path.read_bytes()[:-10])

    running = agents(agent_settings(fleet.target, state_dir, PROFILE))
    wait_for(lambda: fleet.servicer.of_kind("status"), description="startup status")

    assert_serves_verified(running.agent, old)
    assert not new_path.exists()
    status = fleet.servicer.of_kind("status")[0]
    assert status.state == ROLLED_BACK
    assert f"model {new.sha256} failed to load at startup" in status.message
    assert fleet.servicer.registrations[0].current_variant_id == old.variant_id


def test_corrupt_model_without_fallback_serves_nothing(fleet, agents, tmp_path):
    state_dir = tmp_path / "state"
    only = preinstall(state_dir, 2.0, 1.0)
    fleet.servicer.artifacts[only.sha256] = build_affine_model(2.0, 1.0)
    model_path = AgentStore(state_dir).model_path(only.sha256)
    flipped = bytearray(model_path.read_bytes())
    flipped[len(flipped) // 2] ^= 0xFF
    model_path.write_bytes(bytes(flipped))

    running = agents(agent_settings(fleet.target, state_dir, PROFILE))
    wait_for(lambda: fleet.servicer.open_sessions, description="session")

    assert running.agent.runtime.current is None
    assert fleet.servicer.registrations[0].current_variant_id == ""
    assert not model_path.exists()
    # The controller deploys the variant again: the agent downloads it instead of
    # taking the damaged file for the installed model.
    fleet.servicer.send(command("cmd-1", deploy_of(only)))
    wait_for(lambda: final_statuses(fleet, "dep-1"), description="final status")
    assert final_statuses(fleet, "dep-1")[-1].state == ACTIVE
    assert [r.offset for r in fleet.servicer.download_requests] == [0]
    assert_serves_verified(running.agent, only)


MANIFEST_DAMAGE = {
    "deleted": None,
    "empty": b"",
    "corrupt": b"{bad",
}


@pytest.mark.parametrize("damage", sorted(MANIFEST_DAMAGE))
def test_damaged_manifest_serves_intact_model(fleet, agents, tmp_path, signing_key, damage):
    state_dir = tmp_path / "state"
    trust_key(state_dir, signing_key)
    only = preinstall(state_dir, 2.0, 1.0)
    manifest_path = state_dir / "models" / f"{only.sha256}.json"
    if MANIFEST_DAMAGE[damage] is None:
        manifest_path.unlink()
    else:
        manifest_path.write_bytes(MANIFEST_DAMAGE[damage])

    running = agents(agent_settings(fleet.target, state_dir, PROFILE))
    wait_for(lambda: fleet.servicer.open_sessions, description="session")

    current = running.agent.runtime.current
    assert current is not None, "the intact model does not serve"
    assert not current.has_manifest
    assert current.manifest.sha256 == only.sha256
    import numpy as np

    result = running.agent.runtime.infer({"x": np.ones((1, 4), dtype=np.float32)})
    np.testing.assert_allclose(result.outputs["y"], np.full((1, 4), 3.0, dtype=np.float32))
    # No variant id is reported, so the controller deploys the desired variant again.
    assert fleet.servicer.registrations[0].current_variant_id == ""

    deploy = sign_command(signing_key, only, device_id="pi-0001", deployment_id="dep-1", version=1)
    fleet.servicer.send(command("cmd-1", deploy))
    wait_for(lambda: final_statuses(fleet, "dep-1"), description="final status")

    assert final_statuses(fleet, "dep-1")[-1].state == ACTIVE
    assert fleet.servicer.download_requests == [], "the intact model was downloaded again"
    assert AgentStore(state_dir).load_manifest(only.sha256) == only
    assert running.agent.runtime.current.has_manifest
    assert_serves_verified(running.agent, only)


def test_damaged_manifest_and_model_serves_nothing(fleet, agents, tmp_path):
    state_dir = tmp_path / "state"
    only = preinstall(state_dir, 2.0, 1.0)
    (state_dir / "models" / f"{only.sha256}.json").write_bytes(b"{bad")
    model_path = AgentStore(state_dir).model_path(only.sha256)
    model_path.write_bytes(build_affine_model(5.0, 0.0))

    running = agents(agent_settings(fleet.target, state_dir, PROFILE))
    wait_for(lambda: fleet.servicer.open_sessions, description="session")

    assert running.agent.runtime.current is None
    assert not model_path.exists()


def test_damaged_manifest_of_current_prefers_it(fleet, agents, tmp_path):
    state_dir = tmp_path / "state"
    preinstall(state_dir, 2.0, 1.0)
    new = preinstall(state_dir, 3.0, 0.5)
    (state_dir / "models" / f"{new.sha256}.json").unlink()

    running = agents(agent_settings(fleet.target, state_dir, PROFILE))
    wait_for(lambda: fleet.servicer.open_sessions, description="session")

    current = running.agent.runtime.current
    assert current is not None
    assert current.manifest.sha256 == new.sha256
    assert running.agent.store.state.current == new.sha256
    assert not fleet.servicer.of_kind("status"), "a rollback was reported"
