"""``edgefleet simulate``: run a fleet of simulated agents against a controller.

Only typer and the standard library are imported at module level; the simulator loads
inside the command.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["simulate_command"]

logger = logging.getLogger(__name__)


def simulate_command(
    agents: Annotated[int, typer.Option(help="Number of simulated agents.")],
    duration: Annotated[float, typer.Option(help="Seconds to run; the agents then stop.")],
    transport: Annotated[str, typer.Option(help="Transport: grpc or mqtt.")] = "grpc",
    controller: Annotated[
        str | None, typer.Option(help="HOST:PORT of the controller's gRPC endpoint.")
    ] = None,
    broker: Annotated[
        str | None, typer.Option(help="Broker URL for the MQTT transport: mqtt://HOST:PORT.")
    ] = None,
    processes: Annotated[
        int | None,
        typer.Option(
            help="Worker processes the agents are spread over, each running its agents on "
            "one asyncio event loop; default: min(4, CPU count, agents)."
        ),
    ] = None,
    ramp: Annotated[
        float,
        typer.Option(help="Seconds over which the agents start, evenly; 0 starts all at once."),
    ] = 0.0,
    telemetry_interval: Annotated[
        float,
        typer.Option(
            help="Seconds between telemetry samples until the controller sets another, "
            "as it does at registration."
        ),
    ] = 1.0,
    profile: Annotated[
        Path | None,
        typer.Option(help="Device profile TOML of every agent; default: a 4-core ARM board."),
    ] = None,
    device_prefix: Annotated[
        str, typer.Option(help="Device ids are PREFIX-00000, PREFIX-00001, ...")
    ] = "sim",
    db: Annotated[
        str | None,
        typer.Option(
            help="URL of the controller's database (sqlite:///PATH). The telemetry_ingested "
            "and ingest figures count its telemetry rows; without it they are null."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic telemetry.")] = 0,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the report as one JSON object.")
    ] = False,
) -> None:
    """Run simulated agents that speak the real protocol, then report ingest and deploy figures."""
    from edgefleet.agent.simulate import (
        DEFAULT_PROFILE,
        SimulationConfig,
        check_ingest_database,
        run_simulation,
    )
    from edgefleet.agent.transport import TransportKind
    from edgefleet.profiles import load_profile
    from edgefleet.protos.mqtt import BrokerSettings

    try:
        config = SimulationConfig(
            agents=agents,
            transport=TransportKind(transport),
            duration_s=duration,
            controller=controller or "",
            broker=BrokerSettings.from_options(broker) if broker else None,
            processes=(
                processes if processes is not None else min(4, os.cpu_count() or 1, max(agents, 1))
            ),
            ramp_s=ramp,
            telemetry_interval_s=telemetry_interval,
            profile=load_profile(profile) if profile is not None else DEFAULT_PROFILE,
            device_prefix=device_prefix,
            db_url=db,
            seed=seed,
        )
        if db is not None:
            check_ingest_database(db)
    except ValueError as exc:  # InvalidInputError, and TransportKind on an unknown name
        raise typer.BadParameter(str(exc)) from None

    report = run_simulation(config).to_dict()
    if json_output:
        typer.echo(json.dumps(report))
        return
    for name, value in report.items():
        typer.echo(f"{name}: {'n/a' if value is None else value}")
