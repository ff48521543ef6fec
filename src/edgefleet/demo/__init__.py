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
    http_port: int | None = typer.Option(
        None,
        help="Serve the controller's HTTP API and dashboard on this loopback port while the "
        "demo runs; 0 picks a free one.",
    ),
    transport: str = typer.Option(
        "grpc",
        help="Transport between agents and controller: grpc, or mqtt through a broker.",
    ),
    broker: str | None = typer.Option(
        None,
        help="URL of a running MQTT broker (mqtt://HOST:PORT) for --transport mqtt; "
        "by default the demo starts Mosquitto on a free loopback port.",
    ),
) -> None:
    """Compress a digits CNN per device profile, serve it on three agents, squeeze one."""
    from edgefleet.demo.broker import find_mosquitto, missing_message

    if transport not in ("grpc", "mqtt"):
        raise typer.BadParameter(
            f"unknown transport {transport!r}; use grpc or mqtt", param_hint="--transport"
        )
    if broker is not None and transport != "mqtt":
        raise typer.BadParameter("--broker needs --transport mqtt", param_hint="--broker")
    if transport == "mqtt" and broker is None and find_mosquitto() is None:
        # Checked before the model is built, so the user learns it in a second.
        typer.echo(f"error: {missing_message()}", err=True)
        raise typer.Exit(2)

    from edgefleet.demo.runner import run_demo

    if http_port is not None and not 0 <= http_port <= 65535:
        typer.echo(f"error: --http-port {http_port} is not a port; use 1-65535, or 0", err=True)
        raise typer.Exit(2)
    raise typer.Exit(
        run_demo(
            workdir=workdir,
            json_output=json_output,
            http_port=http_port,
            transport=transport,
            broker_url=broker,
        )
    )
