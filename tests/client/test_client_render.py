"""The operator commands' tables, rendered from API documents."""

from __future__ import annotations

from rich.console import Console

from edgefleet.client.render import devices_table, event_line, recipe_text


def render(table) -> str:
    console = Console(record=True, width=200)
    console.print(table)
    return console.export_text()


def device_document(*, requests: int, p95: float, within_budget: bool | None) -> dict:
    return {
        "device_id": "pi-1",
        "profile_name": "raspberry-pi-4b",
        "online": True,
        "within_budget": within_budget,
        "current_variant_id": "3f9c0a1b2c3d4e5f",
        "pinned": False,
        "latency_budget_ms": 20.0,
        "last_seen": None,
        "last_telemetry": {
            "requests": requests,
            "latency_p95_ms": p95,
            "cpu_percent": 12.0,
            "memory_available_mb": 812.0,
        },
    }


def test_devices_table_shows_served_p95_against_budget():
    text = render(devices_table([device_document(requests=40, p95=23.456, within_budget=False)]))
    assert "23.5 / 20.0" in text
    assert "over" in text
    assert "3f9c0a1b2c3d" in text
    assert "3f9c0a1b2c3d4e5f" not in text, "variant ids are shortened to 12 characters"


def test_devices_table_hides_p95_without_requests():
    text = render(devices_table([device_document(requests=0, p95=0.0, within_budget=True)]))
    assert "- / 20.0" in text
    assert "0.000" not in text


def test_recipe_text_names_steps_and_key_fields():
    recipe = [
        {
            "format": "edgefleet.recipe",
            "version": 1,
            "steps": [
                {"type": "structured_pruning", "version": 1, "fields": {"ratio": 0.5}},
                {"type": "static_quantization", "version": 1, "fields": {"weight_type": "int8"}},
            ],
        }
    ]
    assert recipe_text(recipe) == (
        "structured_pruning (ratio 0.5) -> static_quantization (weight_type int8)"
    )
    assert recipe_text([{"format": "edgefleet.recipe", "version": 1, "steps": []}]) == (
        "fp32 baseline"
    )


def test_event_line_shows_kind_device_and_move():
    event = {
        "id": 7,
        "at": "2026-01-31T12:00:00+00:00",
        "kind": "stepped_down",
        "device_id": "pi-1",
        "from_variant": "aaaaaaaaaaaaaaaa",
        "to_variant": "bbbbbbbbbbbbbbbb",
        "reason": "p95 over budget",
    }
    line = event_line(event).plain
    assert line == (
        "2026-01-31 12:00:00 #7 stepped_down pi-1 aaaaaaaaaaaa -> bbbbbbbbbbbb: p95 over budget"
    )
