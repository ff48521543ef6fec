"""``edgefleet demo``: one model, three devices, real traffic and a real resource squeeze.

This module imports only typer and the standard library; the demo itself, which needs
the ``controller`` extra, is imported when the command runs.
"""

from __future__ import annotations

from pathlib import Path

import typer

__all__ = ["demo_command"]


def demo_command(
    json_output: bool = typer.Option(
        False, "--json", help="Print the summary as JSON on stdout; progress goes to stderr."
    ),
    workdir: Path | None = typer.Option(
        None,
        help="Folder for the database, logs and agent state; a new temporary folder by default.",
    ),
) -> None:
    """Compress a digits CNN per device profile, serve it on three agents, squeeze one."""
    from edgefleet.demo.runner import run_demo

    raise typer.Exit(run_demo(workdir=workdir, json_output=json_output))
