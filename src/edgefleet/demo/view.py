"""The demo's live table."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from edgefleet.demo.observer import DeviceView
from edgefleet.demo.traffic import VariantScore


def _fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def _budget_cell(value: float | None, budget: float, pattern: str) -> Text:
    if value is None:
        return Text(f"- / {pattern.format(budget)}")
    style = "green" if value <= budget else "bold red"
    return Text(f"{pattern.format(value)} / {pattern.format(budget)}", style=style)


def fleet_table(
    views: list[DeviceView], live: dict[str, dict[str, VariantScore]], *, title: str
) -> Table:
    """Build one frame of the table: one row per device, budgets in the same cell."""
    table = Table(title=title, title_justify="left", expand=False)
    table.add_column("device")
    table.add_column("profile")
    table.add_column("variant")
    table.add_column("recipe", max_width=34)
    table.add_column("size", justify="right")
    table.add_column("held-out acc", justify="right")
    table.add_column("served acc", justify="right")
    table.add_column("p95 ms / budget", justify="right")
    table.add_column("peak MB / budget", justify="right")
    table.add_column("agent RSS MB", justify="right")

    for view in views:
        score = live.get(view.device_id, {}).get(view.variant_id or "")
        served = f"{score.accuracy:.1%} ({score.served})" if score and score.served else "-"
        size = f"{view.size_bytes / 1024:.0f} KiB" if view.size_bytes is not None else "-"
        table.add_row(
            view.device_id,
            view.profile_name,
            (view.variant_id or "-")[:12],
            view.recipe or view.deployment_state,
            size,
            _fmt(view.accuracy, "{:.1%}"),
            served,
            _budget_cell(view.latency_p95_ms, view.latency_budget_ms, "{:.2f}"),
            _budget_cell(view.peak_memory_mb, view.model_memory_budget_mb, "{:.0f}"),
            _fmt(view.agent_rss_mb, "{:.0f}"),
        )
    return table
