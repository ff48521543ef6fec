"""Read the running controller's registry for the demo's table and checks."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from edgefleet.compress.configs import Recipe
from edgefleet.controller.db import open_database
from edgefleet.controller.errors import UnknownVariantError
from edgefleet.controller.models import DeploymentState, EventRow, VariantRow
from edgefleet.controller.registry import Registry, TelemetryRecord


@dataclass(frozen=True)
class DeviceView:
    """One row of the live table: what a device serves and how it performs."""

    device_id: str
    profile_name: str
    online: bool
    variant_id: str | None
    recipe: str
    size_bytes: int | None
    accuracy: float | None
    peak_memory_mb: float | None
    latency_budget_ms: float
    model_memory_budget_mb: float
    latency_p95_ms: float | None
    agent_rss_mb: float | None
    deployment_state: str

    @property
    def within_budget(self) -> bool | None:
        if self.latency_p95_ms is None or self.peak_memory_mb is None:
            return None
        return (
            self.latency_p95_ms <= self.latency_budget_ms
            and self.peak_memory_mb <= self.model_memory_budget_mb
        )


class FleetObserver:
    """Read-only view of the controller's database; the controller process writes it."""

    def __init__(self, db_url: str) -> None:
        # The controller migrated the schema before it opened its port.
        self._database = open_database(db_url, migrate=False)
        self.registry = Registry(self._database)

    def close(self) -> None:
        self._database.close()

    def model_id(self) -> str | None:
        model = self.registry.active_model()
        return model.id if model is not None else None

    def variant(self, device_id: str, variant_id: str | None) -> VariantRow | None:
        model_id = self.model_id()
        if model_id is None or not variant_id:
            return None
        device = self.registry.get_device(device_id)
        try:
            return self.registry.get_variant(model_id, device.profile_fingerprint, variant_id)
        except UnknownVariantError:
            return None

    def serving_samples(self, device_id: str, *, limit: int) -> list[TelemetryRecord]:
        """Return the newest samples that covered served requests, newest first."""
        samples = self.registry.recent_telemetry(device_id, limit=limit)
        return [sample for sample in samples if sample.requests > 0]

    def device_view(self, device_id: str) -> DeviceView:
        device = self.registry.get_device(device_id)
        profile = device.profile
        variant = self.variant(device_id, device.current_variant_id)
        samples = self.serving_samples(device_id, limit=3)
        latest = samples[0] if samples else None
        deployment = self.registry.latest_deployment(device_id)
        return DeviceView(
            device_id=device_id,
            profile_name=profile["name"],
            online=device.state.value == "online",
            variant_id=device.current_variant_id,
            recipe=short_recipe(variant.recipe_json) if variant else "",
            size_bytes=variant.size_bytes if variant else None,
            accuracy=variant.accuracy if variant else None,
            peak_memory_mb=variant.peak_memory_mb if variant else None,
            latency_budget_ms=profile["latency_budget_ms"],
            model_memory_budget_mb=profile["model_memory_budget_mb"],
            latency_p95_ms=latest.latency_p95_ms if latest else None,
            agent_rss_mb=latest.agent_rss_mb if latest else None,
            deployment_state=deployment.state.value if deployment else "none",
        )

    def is_serving(self, device_id: str) -> bool:
        device = self.registry.find_device(device_id)
        if device is None or not device.current_variant_id:
            return False
        deployment = self.registry.latest_deployment(device_id)
        return deployment is not None and deployment.state is DeploymentState.ACTIVE

    def events(self) -> list[EventRow]:
        return self.registry.list_events()

    def first_variant(self, device_id: str) -> VariantRow | None:
        deployments = self.registry.list_deployments(device_id)
        active = [row for row in deployments if row.state is DeploymentState.ACTIVE]
        first = min(active, key=lambda row: row.created_at, default=None)
        return self.variant(device_id, first.variant_id) if first else None

    def baseline_accuracy(self, device_id: str) -> float | None:
        """Return the fp32 accuracy the planner measured for the device's profile."""
        model_id = self.model_id()
        if model_id is None:
            return None
        device = self.registry.get_device(device_id)
        for plan in self.registry.list_plans(model_id=model_id):
            if plan.profile_fingerprint == device.profile_fingerprint and plan.report:
                return float(plan.report["baseline"]["accuracy"])
        return None


def short_recipe(recipe_json: str) -> str:
    """Return a recipe's steps without their settings, e.g. ``prune 50% + int8 static``."""
    steps = [step.describe().split(" (")[0] for step in Recipe.from_json(recipe_json)]
    return " + ".join(steps) or "fp32"


def iso(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds")
