"""Rich tables of the HTTP API's documents, for the operator commands."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from rich.table import Table
from rich.text import Text

__all__ = [
    "budget_text",
    "deployments_table",
    "device_table",
    "devices_table",
    "event_line",
    "events_table",
    "ladder_table",
    "models_table",
    "recipe_text",
    "rollout_table",
    "rollouts_table",
    "short_id",
    "telemetry_table",
    "variants_tables",
]

SHORT_ID_LENGTH = 12
# Recipe fields shown in tables; the full recipe is in the --json output.
_RECIPE_KEYS = ("ratio", "sparsity", "weight_type", "width", "epochs")


def short_id(value: str | None) -> str:
    return value[:SHORT_ID_LENGTH] if value else "-"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _clock(iso: str | None) -> str:
    if not iso:
        return "never"
    moment = datetime.fromisoformat(iso).astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _age(iso: str | None, *, now: datetime | None = None) -> str:
    if not iso:
        return "never"
    seconds = ((now or datetime.now(UTC)) - datetime.fromisoformat(iso)).total_seconds()
    seconds = max(0, round(seconds))
    if seconds < 90:
        return f"{seconds} s ago"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min ago"
    return f"{round(seconds / 3600)} h ago"


def _served_p95(sample: dict[str, Any] | None) -> str:
    # A sample that served no request carries no latency.
    if not sample or sample["requests"] == 0:
        return "-"
    return _ms(sample["latency_p95_ms"])


def budget_text(within_budget: bool | None) -> Text:
    if within_budget is None:
        return Text("no data", style="dim")
    return Text("within", style="green") if within_budget else Text("over", style="bold red")


def _state_text(online: bool) -> Text:
    return Text("online", style="green") if online else Text("offline", style="dim")


def recipe_text(recipe: list[Any]) -> str:
    """Return a recipe's steps as ``type (key value, ...)`` joined by arrows."""
    steps: list[Any] = []
    for entry in recipe or []:
        steps.extend(entry["steps"] if isinstance(entry, dict) and "steps" in entry else [entry])
    if not steps:
        return "fp32 baseline"
    parts = []
    for step in steps:
        if not isinstance(step, dict):
            parts.append(str(step))
            continue
        fields = step.get("fields", {})
        shown = [f"{key} {fields[key]}" for key in _RECIPE_KEYS if key in fields]
        parts.append(f"{step.get('type')} ({', '.join(shown)})" if shown else str(step.get("type")))
    return " -> ".join(parts)


def devices_table(devices: list[dict[str, Any]]) -> Table:
    table = Table(title=f"{len(devices)} device(s)")
    for column in ("device", "profile", "state", "budget", "variant", "pinned"):
        table.add_column(column)
    for column in ("p95 / budget ms", "CPU %", "memory free MB", "last seen"):
        table.add_column(column, justify="right")
    for device in devices:
        sample = device.get("last_telemetry")
        table.add_row(
            device["device_id"],
            device["profile_name"],
            _state_text(device["online"]),
            budget_text(device["within_budget"]),
            short_id(device["current_variant_id"]),
            "pinned" if device["pinned"] else "",
            f"{_served_p95(sample)} / {_ms(device['latency_budget_ms'])}",
            f"{sample['cpu_percent']:.0f}" if sample else "-",
            f"{sample['memory_available_mb']:.0f}" if sample else "-",
            _age(device["last_seen"]),
        )
    return table


def device_table(device: dict[str, Any]) -> Table:
    table = Table(title=f"device {device['device_id']}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    sample = device.get("last_telemetry") or {}
    temperature = sample.get("temperature_c")
    rows: list[tuple[str, str | Text]] = [
        ("state", _state_text(device["online"])),
        ("budget", budget_text(device["within_budget"])),
        ("profile", f"{device['profile_name']} ({device['profile_fingerprint'][:12]})"),
        ("p95 budget", f"{_ms(device['latency_budget_ms'])} ms"),
        ("model memory budget", f"{device['model_memory_budget_mb']:g} MB"),
        ("serving", device["current_variant_id"] or "-"),
        ("target", device["desired_variant_id"] or "-"),
        ("pinned", "yes" if device["pinned"] else "no"),
        ("latest p95", f"{_served_p95(sample or None)} ms"),
        ("latest CPU", f"{sample['cpu_percent']:.0f} %" if sample else "-"),
        ("memory free", f"{sample['memory_available_mb']:.0f} MB" if sample else "-"),
        ("temperature", f"{temperature:.1f} °C" if temperature is not None else "-"),
        (
            "latency scale",
            "-" if device["latency_scale"] is None else f"{device['latency_scale']:.3f}",
        ),
        ("agent", f"{device['agent_version']} (onnxruntime {device['onnxruntime_version']})"),
        ("last seen", f"{_clock(device['last_seen'])} ({_age(device['last_seen'])})"),
        ("dropped samples", str(device["dropped_samples"])),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def ladder_table(ladder: list[dict[str, Any]], *, current: str | None, title: str) -> Table:
    table = Table(title=title)
    table.add_column("rung", justify="right")
    table.add_column("variant")
    for column in ("accuracy %", "p95 ms", "memory MB", "size KiB"):
        table.add_column(column, justify="right")
    table.add_column("recipe")
    for rung in ladder:
        serving = rung["variant_id"] == current
        table.add_row(
            str(rung["ladder_rank"]),
            rung["variant_id"] + (" (serving)" if serving else ""),
            f"{rung['accuracy'] * 100:.2f}",
            _ms(rung["latency_p95_ms"]),
            f"{rung['peak_memory_mb']:.1f}",
            f"{rung['size_bytes'] / 1024:.1f}",
            recipe_text(rung["recipe"]),
            style="bold" if serving else None,
        )
    return table


def deployments_table(deployments: list[dict[str, Any]], *, title: str) -> Table:
    table = Table(title=title)
    for column in ("created", "deployment", "variant", "from", "state", "reason"):
        table.add_column(column)
    for deployment in deployments:
        table.add_row(
            _clock(deployment["created_at"]),
            short_id(deployment["deployment_id"]),
            short_id(deployment["variant_id"]),
            short_id(deployment["previous_variant_id"]),
            deployment["state"],
            deployment["reason"],
        )
    return table


def telemetry_table(history: dict[str, Any]) -> Table:
    step = history.get("step_s")
    title = f"telemetry of {history['device_id']}" + (f", {step} s buckets" if step else "")
    table = Table(title=title)
    table.add_column("time")
    for column in (
        "samples", "CPU %", "memory free MB", "temp °C", "requests",
        "p50 ms", "p95 ms", "p99 ms", "rps",
    ):  # fmt: skip
        table.add_column(column, justify="right")
    for point in history["points"]:
        temperature = point["temperature_c"]
        table.add_row(
            _clock(point["at"]),
            str(point["samples"]),
            f"{point['cpu_percent']:.0f}",
            f"{point['memory_available_mb']:.0f}",
            "-" if temperature is None else f"{temperature:.1f}",
            str(point["requests"]),
            _ms(point["latency_p50_ms"]),
            _ms(point["latency_p95_ms"]),
            _ms(point["latency_p99_ms"]),
            f"{point['throughput_rps']:.1f}",
        )
    if history.get("truncated"):
        table.caption = "more points fall in the range; the newest are shown (raise --limit)"
    return table


def models_table(models: dict[str, Any]) -> Table:
    table = Table(title=f"{len(models['models'])} model(s)")
    for column in ("model", "name", "active", "registered", "plans", "source"):
        table.add_column(column)
    for model in models["models"]:
        plans = ", ".join(f"{key[:12]} {state}" for key, state in sorted(model["plans"].items()))
        table.add_row(
            model["model_id"],
            model["name"],
            "active" if model["active"] else "",
            _clock(model["registered_at"]),
            plans or "none",
            model["source"],
        )
    return table


def variants_tables(variants: dict[str, Any]) -> list[Table]:
    tables = []
    for profile in variants["profiles"]:
        front = set(profile["pareto_front"])
        table = Table(title=f"{profile['profile_name']}: variants of model {variants['model_id']}")
        table.add_column("variant")
        table.add_column("rung", justify="right")
        table.add_column("front")
        for column in ("accuracy %", "p95 ms", "memory MB", "size KiB"):
            table.add_column(column, justify="right")
        table.add_column("recipe")
        for variant in profile["variants"]:
            rank = variant["ladder_rank"]
            table.add_row(
                variant["variant_id"],
                "-" if rank is None else str(rank),
                "yes" if variant["variant_id"] in front else "",
                f"{variant['accuracy'] * 100:.2f}",
                _ms(variant["latency_p95_ms"]),
                f"{variant['peak_memory_mb']:.1f}",
                f"{variant['size_bytes'] / 1024:.1f}",
                recipe_text(variant["recipe"]),
            )
        tables.append(table)
    return tables


def _target_text(target: dict[str, Any]) -> str:
    kind = target.get("kind")
    if kind == "profile":
        return f"profile:{target.get('profile')}"
    if kind == "devices":
        return "devices:" + ",".join(target.get("device_ids") or [])
    return "all"


def _wave_progress(rollout: dict[str, Any]) -> str:
    waves = rollout["waves"]
    passed = sum(1 for wave in waves if wave["state"] == "passed")
    specs = ", ".join(wave["spec"] for wave in waves)
    return f"{passed}/{len(waves)} passed ({specs})"


def _device_progress(rollout: dict[str, Any]) -> str:
    devices = rollout["devices"]
    done = sum(1 for device in devices if device["state"] in ("updated", "unchanged"))
    return f"{done}/{len(devices)}"


def rollouts_table(rollouts: list[dict[str, Any]]) -> Table:
    table = Table(title=f"{len(rollouts)} rollout(s), newest first")
    for column in ("rollout", "state", "model", "target", "waves", "updated", "created"):
        table.add_column(column)
    for rollout in rollouts:
        table.add_row(
            rollout["rollout_id"],
            rollout["state"],
            rollout["model_id"],
            _target_text(rollout["target"]),
            _wave_progress(rollout),
            _device_progress(rollout),
            _clock(rollout["created_at"]),
        )
    return table


def rollout_table(rollout: dict[str, Any]) -> Table:
    table = Table(
        title=f"rollout {rollout['rollout_id']}: {rollout['state']}, "
        f"target {_target_text(rollout['target'])}, waves {_wave_progress(rollout)}"
    )
    for column in ("device", "wave", "state", "variant", "previous", "reason"):
        table.add_column(column)
    for device in rollout["devices"]:
        table.add_row(
            device["device_id"],
            str(device["wave"]),
            device["state"],
            short_id(device["variant_id"]),
            short_id(device["previous_variant_id"]),
            device["reason"],
        )
    return table


def events_table(events: list[dict[str, Any]]) -> Table:
    table = Table(title=f"{len(events)} event(s), oldest first")
    for column in ("id", "time", "kind", "device", "from", "to", "reason"):
        table.add_column(column)
    for event in events:
        table.add_row(
            str(event["id"]),
            _clock(event["at"]),
            event["kind"],
            event["device_id"] or "",
            short_id(event["from_variant"]),
            short_id(event["to_variant"]),
            event["reason"],
        )
    return table


def event_line(event: dict[str, Any]) -> Text:
    """Return one event as a line for ``edgefleet events --follow``."""
    line = Text(f"{_clock(event['at'])} ")
    line.append(f"#{event['id']} {event['kind']}", style="bold")
    if event["device_id"]:
        line.append(f" {event['device_id']}")
    if event["from_variant"] or event["to_variant"]:
        line.append(f" {short_id(event['from_variant'])} -> {short_id(event['to_variant'])}")
    if event["reason"]:
        line.append(f": {event['reason']}")
    return line


def json_text(document: Any) -> str:
    return json.dumps(document, indent=2, sort_keys=True)
