"""Prometheus metrics of the fleet, collected from the controller's state at scrape time.

``FleetCollector`` reads the registry when Prometheus scrapes ``/metrics``: the devices,
each device's newest telemetry sample and the event counts. Nothing is updated per
telemetry message, so ingest pays nothing for metrics, and the counters survive a
controller restart because they are counts of stored events.

Metric names follow the Prometheus conventions (base units: bytes, seconds, Celsius)::

    edgefleet_devices{state}                                    gauge
    edgefleet_device_online{device_id,profile}                  gauge, 1 or 0
    edgefleet_device_pinned{device_id}                          gauge, 1 or 0
    edgefleet_device_within_budget{device_id}                   gauge, 1 or 0 (absent: no sample)
    edgefleet_device_variant_info{device_id,profile,model_id,variant_id,desired_variant_id}
    edgefleet_device_cpu_percent{device_id}                     gauge
    edgefleet_device_memory_available_bytes{device_id}          gauge
    edgefleet_device_memory_total_bytes{device_id}              gauge
    edgefleet_device_agent_resident_memory_bytes{device_id}     gauge
    edgefleet_device_load1{device_id}                           gauge
    edgefleet_device_temperature_celsius{device_id}             gauge (absent: no sensor)
    edgefleet_device_inference_latency_seconds{device_id,quantile}   gauge: 0.5, 0.95, 0.99,
                                                                only for samples with requests
    edgefleet_device_latency_budget_seconds{device_id}          gauge
    edgefleet_device_throughput_requests_per_second{device_id}  gauge
    edgefleet_device_last_telemetry_timestamp_seconds{device_id}     gauge
    edgefleet_device_backlog_dropped_samples{device_id}         gauge, the agent's running count
    edgefleet_deployments_total                                 counter
    edgefleet_rollbacks_total                                   counter
    edgefleet_deployment_failures_total                         counter
    edgefleet_recompressions_total                              counter
    edgefleet_policy_steps_total{direction}                     counter, down or up
    edgefleet_alerts_total                                      counter
    edgefleet_telemetry_dropped_total{device_id}                counter

The device gauges carry the newest stored sample even when it is old; compare
``edgefleet_device_last_telemetry_timestamp_seconds`` with ``time()`` to find stale ones.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from edgefleet.controller.models import DeviceRow, DeviceState, EventKind

if TYPE_CHECKING:
    from edgefleet.controller.service import Controller

__all__ = ["FleetCollector"]

logger = logging.getLogger(__name__)

_MIB = 1024 * 1024

_EVENT_COUNTERS = (
    ("edgefleet_deployments", "Deployments requested (by an operator, the policy or a rollout).",
     EventKind.DEPLOY_REQUESTED),
    ("edgefleet_rollbacks", "Deployments the agent rolled back after a failed health check.",
     EventKind.ROLLED_BACK),
    ("edgefleet_deployment_failures", "Deployments the agent reported failed.",
     EventKind.DEPLOY_FAILED),
    ("edgefleet_recompressions", "Recompressions started because a ladder ran out.",
     EventKind.RECOMPRESSED),
    ("edgefleet_alerts", "Budget breaches the policy alerted on without acting.",
     EventKind.ALERT),
)  # fmt: skip


class FleetCollector(Collector):
    """A custom collector that reads fleet state on every scrape; see the module docstring."""

    def __init__(self, controller: Controller) -> None:
        self._controller = controller

    def describe(self) -> list[Metric]:
        # Returning no descriptions keeps registration from calling collect(), which
        # needs a running controller.
        return []

    def collect(self) -> Iterator[Metric]:
        # Imported here: the queries module loads SQLAlchemy, and the package must stay
        # importable without it for describe().
        from edgefleet.controller.api import queries
        from edgefleet.controller.api.convert import is_within_budget, peak_memory_by_variant

        controller = self._controller
        registry = controller.registry
        devices = registry.list_devices()
        latest = queries.latest_telemetry(registry.database)
        model = registry.active_model()
        peaks = (
            peak_memory_by_variant(queries.list_variants(registry.database, model.id))
            if model is not None
            else {}
        )

        count = GaugeMetricFamily(
            "edgefleet_devices", "Registered devices by connection state.", labels=["state"]
        )
        for state in DeviceState:
            count.add_metric([state.value], sum(1 for d in devices if d.state is state))
        yield count

        online = GaugeMetricFamily(
            "edgefleet_device_online",
            "1 while the device's session is open.",
            labels=["device_id", "profile"],
        )
        pinned = _device_gauge("edgefleet_device_pinned", "1 while the device is pinned.")
        within = _device_gauge(
            "edgefleet_device_within_budget",
            "1 when the newest sample is within the latency and memory budget, as the "
            "policy judges it.",
        )
        variant = InfoMetricFamily(
            "edgefleet_device_variant",
            "The variant a device serves and the one the controller targets.",
            labels=["device_id", "profile", "model_id", "variant_id", "desired_variant_id"],
        )
        budget = _device_gauge(
            "edgefleet_device_latency_budget_seconds", "p95 latency budget of the profile."
        )
        cpu = _device_gauge("edgefleet_device_cpu_percent", "System-wide CPU use in percent.")
        available = _device_gauge(
            "edgefleet_device_memory_available_bytes", "Memory available on the device."
        )
        total = _device_gauge("edgefleet_device_memory_total_bytes", "Memory of the device.")
        rss = _device_gauge(
            "edgefleet_device_agent_resident_memory_bytes", "Resident memory of the agent."
        )
        load = _device_gauge("edgefleet_device_load1", "One-minute load average.")
        temperature = _device_gauge(
            "edgefleet_device_temperature_celsius", "Hottest temperature sensor."
        )
        latency = GaugeMetricFamily(
            "edgefleet_device_inference_latency_seconds",
            "Inference latency percentiles over the newest sample's window.",
            labels=["device_id", "quantile"],
        )
        throughput = _device_gauge(
            "edgefleet_device_throughput_requests_per_second", "Inference requests per second."
        )
        seen = _device_gauge(
            "edgefleet_device_last_telemetry_timestamp_seconds",
            "Unix time the newest sample was received.",
        )

        backlog_dropped = _device_gauge(
            "edgefleet_device_backlog_dropped_samples",
            "Samples the agent's offline backlog had to drop, as its newest sample reports.",
        )

        model_id = model.id if model is not None else ""
        for device in devices:
            labels = [device.device_id]
            profile_name = str(device.profile.get("name", ""))
            online.add_metric(
                [device.device_id, profile_name], 1.0 if device.state is DeviceState.ONLINE else 0
            )
            pinned.add_metric(labels, 1.0 if device.pinned else 0.0)
            variant.add_metric(
                [],
                {
                    "device_id": device.device_id,
                    "profile": profile_name,
                    "model_id": model_id,
                    "variant_id": device.current_variant_id or "",
                    "desired_variant_id": device.desired_variant_id or "",
                },
            )
            budget.add_metric(labels, float(device.profile["latency_budget_ms"]) / 1000)

            sample = latest.get(device.device_id)
            if sample is None:
                continue
            peak = peaks.get((device.profile_fingerprint, device.current_variant_id or ""), 0.0)
            verdict = is_within_budget(
                device, sample, policy=controller.config.policy, peak_memory_mb=peak
            )
            within.add_metric(labels, 1.0 if verdict else 0.0)
            cpu.add_metric(labels, sample.cpu_percent)
            available.add_metric(labels, sample.memory_available_mb * _MIB)
            total.add_metric(labels, sample.memory_total_mb * _MIB)
            rss.add_metric(labels, sample.agent_rss_mb * _MIB)
            load.add_metric(labels, sample.load_1m)
            if sample.temperature_c is not None:
                temperature.add_metric(labels, sample.temperature_c)
            # A window without requests has no latency: the series is left out, so an
            # alert on p95 does not read an idle device as a perfect one.
            if sample.requests > 0:
                for quantile, value_ms in (
                    ("0.5", sample.latency_p50_ms),
                    ("0.95", sample.latency_p95_ms),
                    ("0.99", sample.latency_p99_ms),
                ):
                    latency.add_metric([device.device_id, quantile], value_ms / 1000)
            throughput.add_metric(labels, sample.throughput_rps)
            seen.add_metric(labels, sample.received_at.timestamp())
            backlog_dropped.add_metric(labels, float(sample.dropped_samples))

        yield from (online, pinned, within, variant, budget, cpu, available, total, rss, load)
        yield from (temperature, latency, throughput, seen, backlog_dropped)
        yield from self._counters(queries.count_events_by_kind(registry.database), devices)

    def _counters(self, counts: dict[EventKind, int], devices: list[DeviceRow]) -> Iterator[Metric]:
        for name, documentation, kind in _EVENT_COUNTERS:
            counter = CounterMetricFamily(name, documentation)
            counter.add_metric([], counts.get(kind, 0))
            yield counter

        steps = CounterMetricFamily(
            "edgefleet_policy_steps",
            "Ladder steps the policy took.",
            labels=["direction"],
        )
        steps.add_metric(["down"], counts.get(EventKind.STEPPED_DOWN, 0))
        steps.add_metric(["up"], counts.get(EventKind.STEPPED_UP, 0))
        yield steps

        dropped = CounterMetricFamily(
            "edgefleet_telemetry_dropped",
            "Invalid or duplicate telemetry samples dropped since the controller started.",
            labels=["device_id"],
        )
        # Samples may name ids that never registered (a misconfigured agent, a stray MQTT
        # publisher); one labelled series each would let them grow the label set without
        # bound, so they are summed under device_id="".
        registered = {device.device_id for device in devices}
        unregistered = 0
        for device_id, drops in sorted(self._controller.telemetry_drops.counts().items()):
            if device_id in registered:
                dropped.add_metric([device_id], drops)
            else:
                unregistered += drops
        dropped.add_metric([""], unregistered)
        yield dropped


def _device_gauge(name: str, documentation: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=["device_id"])
