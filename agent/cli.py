"""``edgefleet agent``: run the device agent.

Only typer and the standard library are imported at module level, so the root ``edgefleet``
command starts quickly. onnxruntime, gRPC and numpy load inside the command.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Run the device agent.", no_args_is_help=True)

logger = logging.getLogger(__name__)

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@app.callback()
def agent_commands() -> None:
    """Run the device agent."""
    # A no-op under ``edgefleet``, whose own callback configured logging first; it sets up
    # INFO logging under ``python -m edgefleet.agent``.
    logging.basicConfig(level=logging.INFO, format=_LOG_FORMAT)


@app.command("run")
def run(
    controller: Annotated[str, typer.Option(help="Controller gRPC address as HOST:PORT.")],
    profile: Annotated[Path, typer.Option(help="Device profile TOML file.")],
    device_id: Annotated[
        str, typer.Option(help="Stable id of this device: 1-64 of A-Z a-z 0-9 . _ -")
    ],
    state_dir: Annotated[
        Path, typer.Option(help="Directory for models, manifests and update state.")
    ],
    api_host: Annotated[
        str, typer.Option(help="Address the local inference API binds to.")
    ] = "127.0.0.1",
    api_port: Annotated[
        int, typer.Option(help="Port of the local inference API; 0 picks a free one.")
    ] = 0,
    telemetry_interval: Annotated[
        float,
        typer.Option(help="Seconds between telemetry samples until the controller sets one."),
    ] = 1.0,
) -> None:
    """Serve the local model and keep it in sync with the controller until SIGTERM or SIGINT."""
    from edgefleet.agent.daemon import Agent, AgentConfig
    from edgefleet.agent.errors import StorageError
    from edgefleet.errors import InvalidInputError
    from edgefleet.profiles import load_profile

    try:
        config = AgentConfig(
            controller=controller,
            device_id=device_id,
            profile=load_profile(profile),
            state_dir=state_dir,
            api_host=api_host,
            api_port=api_port,
            telemetry_interval_s=telemetry_interval,
        )
        agent = Agent(config)
    except (InvalidInputError, StorageError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except OSError as exc:  # the API port is taken or the address is invalid
        address = f"{api_host}:{api_port}"
        typer.echo(f"error: cannot bind the inference API to {address}: {exc}", err=True)
        raise typer.Exit(2) from None

    def request_stop(signum: int, _frame: object) -> None:
        logger.info("received %s, stopping", signal.Signals(signum).name)
        # Stopping cancels the gRPC call, which takes gRPC's locks; doing that from a
        # thread avoids re-entering them from a handler that interrupted the main thread.
        threading.Thread(target=agent.stop, name="stop").start()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    agent.run()
