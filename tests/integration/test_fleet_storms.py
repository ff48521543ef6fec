"""Reconnect storms and backlog bursts: a fleet of simulated agents against a real broker."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter

from fleet_support import fleet_config
from mosquitto_support import MqttProbe

from edgefleet.agent.simulate import (
    DEFAULT_PROFILE,
    SimulationConfig,
    SimulationReport,
    run_simulation,
)
from edgefleet.agent.transport import TransportKind
from edgefleet.controller.config import ControllerConfig
from edgefleet.controller.models import EventKind
from edgefleet.protos.mqtt import BrokerSettings, DeviceTopics, TopicKind
from edgefleet.protos.v1 import fleet_pb2

AGENTS = 20


def _run_in_thread(config: SimulationConfig) -> tuple[threading.Thread, list[SimulationReport]]:
    reports: list[SimulationReport] = []
    thread = threading.Thread(target=lambda: reports.append(run_simulation(config)), daemon=True)
    thread.start()
    return thread, reports


def _wait_for(condition, *, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s"
        time.sleep(0.1)


def _registrations(controller) -> int:
    return len(controller.registry.list_events(kinds=[EventKind.REGISTERED]))


def test_broker_restart_brings_every_agent_back(broker, start_controller):
    fleet = start_controller(fleet_config())
    controller = fleet.controller
    settings = BrokerSettings.from_options(broker.url)
    controller.serve_mqtt(settings)
    config = SimulationConfig(
        agents=AGENTS,
        transport=TransportKind.MQTT,
        duration_s=22.0,
        broker=settings,
        telemetry_interval_s=0.5,
    )
    thread, reports = _run_in_thread(config)
    _wait_for(lambda: len(controller.sessions.connected()) == AGENTS, timeout_s=15)

    broker.restart()  # same port; every connection drops at once
    restarted = time.monotonic()
    # The broker sends no will when it stops, so the controller may never see a device
    # offline. Every agent registers again on its new connection, though.
    _wait_for(lambda: _registrations(controller) >= 2 * AGENTS, timeout_s=15)
    _wait_for(lambda: len(controller.sessions.connected()) == AGENTS, timeout_s=15)
    back_after_s = time.monotonic() - restarted
    thread.join(timeout=60)

    report = reports[0]
    assert report.agents_online_at_end == AGENTS
    assert report.reconnects >= AGENTS
    assert back_after_s < 15


def test_connect_rate_limit_honoured(start_controller):
    rate, burst = 5.0, 5
    base = fleet_config()
    fleet = start_controller(
        ControllerConfig(
            telemetry_interval_s=base.telemetry_interval_s,
            host_calibration_duration_s=base.host_calibration_duration_s,
            shutdown_grace_s=base.shutdown_grace_s,
            connect_rate_per_s=rate,
            connect_burst=burst,
            policy=base.policy,
        )
    )
    controller = fleet.controller
    config = SimulationConfig(
        agents=AGENTS,
        transport=TransportKind.GRPC,
        duration_s=12.0,
        controller=f"127.0.0.1:{fleet.port}",
    )
    report = run_simulation(config)

    registered = [
        event.at
        for event in controller.registry.list_events(kinds=[EventKind.REGISTERED])
        if (event.device_id or "").startswith("sim-")
    ]
    first, last = min(registered), max(registered)
    per_second = Counter(int((at - first).total_seconds()) for at in registered)
    assert report.agents_connected == AGENTS
    assert len(registered) == AGENTS  # every rejected agent retried and got in
    assert controller.connect_limiter.rejected > 0
    # A token bucket admits at most burst + rate in any one second.
    assert max(per_second.values()) <= burst + rate
    # Beyond the burst the agents got in at the rate, so registration took this long.
    assert (last - first).total_seconds() >= (AGENTS - burst) / rate - 1


def test_backlog_burst_stored_not_dropped(start_broker, start_controller):
    # As deploy/mosquitto/mosquitto.conf: the broker keeps the backlog while the
    # controller's ingest queue is full.
    broker = start_broker(settings="allow_anonymous true\nmax_queued_messages 100000\n")
    base = fleet_config()
    fleet = start_controller(
        ControllerConfig(
            telemetry_interval_s=base.telemetry_interval_s,
            host_calibration_duration_s=base.host_calibration_duration_s,
            shutdown_grace_s=base.shutdown_grace_s,
            telemetry_queue_max=100,
            policy=base.policy,
        )
    )
    controller = fleet.controller
    controller.serve_mqtt(BrokerSettings.from_options(broker.url))
    devices = [f"burst-{index}" for index in range(10)]
    for device_id in devices:
        controller.register_device(device_id, DEFAULT_PROFILE)
    # Another connection holds SQLite's write lock, so ingest cannot store anything
    # until it lets go; however fast this machine is, the queue must fill.
    lock = sqlite3.connect(fleet.data_dir / "edgefleet.db", isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    # One sender publishes a backlog far larger than the ingest queue, as a fleet
    # flushing its outboxes after an outage does.
    probe = MqttProbe(broker, "burst-sender")
    total = 0
    try:
        for seq in range(1, 301):
            for device_id in devices:
                sample = fleet_pb2.TelemetrySample(
                    device_id=device_id,
                    seq=seq,
                    sampled_at_ms=int(time.time() * 1000),
                    cpu_percent=20.0,
                    memory_total_mb=4096.0,
                    memory_available_mb=2048.0,
                    window_s=1.0,
                )
                topic = DeviceTopics(device_id).topic(TopicKind.TELEMETRY)
                probe.client.publish(topic, sample.SerializeToString(), qos=1)
                total += 1
        # The endpoint waits on the full queue (well inside SQLite's busy timeout).
        _wait_for(lambda: controller.ingest_stats().blocked_submits > 0, timeout_s=20)
    finally:
        lock.execute("ROLLBACK")
        lock.close()

    _wait_for(lambda: controller.registry.count_telemetry() == total, timeout_s=60)
    probe.close()
    stats = controller.ingest_stats()
    assert stats.dropped == 0
    assert stats.blocked_submits > 0
    assert controller.dropped_samples() == 0
