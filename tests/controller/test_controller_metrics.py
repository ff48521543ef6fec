"""``/metrics`` scraped over real HTTP and parsed with prometheus_client's own parser."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from api_support import ApiFleet, serve_api
from controller_support import BACKENDS, make_sample
from prometheus_client.parser import text_string_to_metric_families

from edgefleet.controller.service import Controller
from edgefleet.profiles import DeviceProfile

# Every test runs on SQLite and on a real PostgreSQL server.
pytestmark = pytest.mark.parametrize("database_url", BACKENDS, indirect=True)

MIB = 1024 * 1024


@pytest.fixture
def api(controller: Controller, profile: DeviceProfile) -> Iterator[ApiFleet]:
    with serve_api(controller, profile) as fleet:
        controller.register_device("dev-1", profile)
        controller.register_device("dev-2", profile)
        assert controller.wait_until_idle(30)
        yield fleet


def scrape(client: httpx.Client) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Return every sample as {sample name: {sorted labels: value}}."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[labels] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[name][tuple(sorted(labels.items()))]


def test_metrics_gauges_follow_telemetry(api: ApiFleet) -> None:
    api.controller.ingest_telemetry(
        "dev-1",
        make_sample(
            "dev-1",
            cpu_percent=42.0,
            memory_available_mb=300.0,
            latency_p50_ms=2.0,
            latency_p95_ms=8.0,
            latency_p99_ms=11.0,
            temperature_c=51.5,
            variant_id=api.ladder[0],
            dropped_samples=7,
        ),
    )

    samples = scrape(api.client)
    device = api.client.get("/api/v1/devices/dev-1").json()

    assert value(samples, "edgefleet_devices", state="offline") == 2
    assert value(samples, "edgefleet_device_online", device_id="dev-1", profile="test-board") == 0
    assert value(samples, "edgefleet_device_cpu_percent", device_id="dev-1") == 42.0
    assert value(samples, "edgefleet_device_memory_available_bytes", device_id="dev-1") == (
        300 * MIB
    )
    assert value(samples, "edgefleet_device_temperature_celsius", device_id="dev-1") == 51.5
    latency = "edgefleet_device_inference_latency_seconds"
    assert value(samples, latency, device_id="dev-1", quantile="0.5") == pytest.approx(0.002)
    assert value(samples, latency, device_id="dev-1", quantile="0.95") == pytest.approx(0.008)
    assert value(samples, latency, device_id="dev-1", quantile="0.99") == pytest.approx(0.011)
    assert value(samples, "edgefleet_device_latency_budget_seconds", device_id="dev-1") == 0.02
    assert value(samples, "edgefleet_device_within_budget", device_id="dev-1") == 1
    assert value(samples, "edgefleet_device_backlog_dropped_samples", device_id="dev-1") == 7
    assert device["last_telemetry"]["dropped_samples"] == 7
    # dev-2 never reported: no resource gauges, but its state and variant are known.
    assert (("device_id", "dev-2"),) not in samples["edgefleet_device_cpu_percent"]
    assert value(samples, "edgefleet_device_pinned", device_id="dev-2") == 0


def test_idle_device_has_no_latency_series(api: ApiFleet) -> None:
    api.controller.ingest_telemetry(
        "dev-2", make_sample("dev-2", requests=0, latency_p50_ms=0.0, latency_p95_ms=0.0)
    )

    samples = scrape(api.client)

    latency = samples.get("edgefleet_device_inference_latency_seconds", {})
    assert not [labels for labels in latency if ("device_id", "dev-2") in labels]
    assert value(samples, "edgefleet_device_cpu_percent", device_id="dev-2") == 12.5


def test_metrics_variant_info_labels(api: ApiFleet) -> None:
    samples = scrape(api.client)

    info = samples["edgefleet_device_variant_info"]
    labels = {dict(key)["device_id"]: dict(key) for key in info}
    assert labels["dev-1"]["desired_variant_id"] == api.ladder[0]
    assert labels["dev-1"]["variant_id"] == ""
    assert labels["dev-1"]["model_id"] == api.model.id
    assert labels["dev-1"]["profile"] == "test-board"
    assert set(info.values()) == {1.0}


def test_metrics_counters_count_events(api: ApiFleet) -> None:
    before = scrape(api.client)

    api.client.post("/api/v1/devices/dev-1/deployments", json={"variant_id": api.ladder[1]})
    api.client.post("/api/v1/devices/dev-2/deployments", json={"variant_id": api.ladder[2]})
    api.controller.ingest_telemetry("dev-1", make_sample("dev-1", cpu_percent=float("nan")))
    api.controller.ingest_telemetry("dev-1", make_sample("dev-1", latency_p95_ms=-1.0))
    after = scrape(api.client)

    assert value(after, "edgefleet_deployments_total") == (
        value(before, "edgefleet_deployments_total") + 2
    )
    assert value(after, "edgefleet_telemetry_dropped_total", device_id="dev-1") == 2
    assert value(after, "edgefleet_telemetry_dropped_total", device_id="") == 0
    for name in (
        "edgefleet_rollbacks_total",
        "edgefleet_recompressions_total",
        "edgefleet_alerts_total",
        "edgefleet_deployment_failures_total",
    ):
        assert value(after, name) == 0
    assert value(after, "edgefleet_policy_steps_total", direction="down") == 0


def test_metrics_count_alerts_and_steps(api: ApiFleet) -> None:
    # The test controller steps down after three breaching samples with no cooldown.
    device = api.controller.registry.get_device("dev-1")
    api.controller.registry.update_device("dev-1", current_variant_id=device.desired_variant_id)
    for seq in range(1, 4):
        api.controller.ingest_telemetry(
            "dev-1",
            make_sample("dev-1", seq=seq, latency_p95_ms=50.0, variant_id=api.ladder[0]),
        )

    samples = scrape(api.client)

    assert value(samples, "edgefleet_policy_steps_total", direction="down") == 1
    assert value(samples, "edgefleet_device_within_budget", device_id="dev-1") == 0


def test_metrics_sum_drops_of_unregistered_devices(api: ApiFleet) -> None:
    api.controller.ingest_telemetry_batch(
        [("stray-1", make_sample("stray-1")), ("stray-2", make_sample("stray-2"))]
    )

    samples = scrape(api.client)

    assert value(samples, "edgefleet_telemetry_dropped_total", device_id="") == 2
    dropped_ids = {dict(key)["device_id"] for key in samples["edgefleet_telemetry_dropped_total"]}
    assert "stray-1" not in dropped_ids


GRAFANA_DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "edgefleet-fleet.json"


def test_grafana_dashboard_uses_served_metrics(api: ApiFleet) -> None:
    api.controller.ingest_telemetry("dev-1", make_sample("dev-1", temperature_c=40.0))
    response = api.client.get("/metrics")
    served = {
        name
        for family in text_string_to_metric_families(response.text)
        for name in (family.name, *(sample.name for sample in family.samples))
    }
    dashboard = json.loads(GRAFANA_DASHBOARD.read_text())

    used = set()
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            used |= set(re.findall(r"edgefleet_[a-z0-9_]+", target["expr"]))
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}

    assert used, "the dashboard queries no edgefleet metric"
    assert used <= served, sorted(used - served)
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
