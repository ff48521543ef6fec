"""The ``edgefleet`` command line.

Each package contributes its own commands; the modules below import only typer and the
standard library at import time, so ``edgefleet agent run`` works on a device that has no
torch installed.
"""

from __future__ import annotations

import logging
from enum import StrEnum

import typer

from edgefleet.agent.cli import app as agent_app
from edgefleet.agent.cli import enroll_command
from edgefleet.agent.simulate_cli import simulate_command
from edgefleet.client.commands import register_commands as register_operator_commands
from edgefleet.compress.cli import compress_command
from edgefleet.controller.cli import app as controller_app
from edgefleet.demo import demo_command


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


app = typer.Typer(
    name="edgefleet",
    help="Compress a model per device profile, deploy it to edge devices and keep them in budget.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(agent_app, name="agent")
app.add_typer(controller_app, name="controller")
app.command("compress")(compress_command)
app.command("demo")(demo_command)
app.command("enroll")(enroll_command)
app.command("simulate")(simulate_command)
# devices, device, telemetry, models, variants, deploy, pin, unpin, events, rollouts
register_operator_commands(app)


@app.callback()
def configure(
    log_level: LogLevel = typer.Option(LogLevel.INFO, help="Minimum level of log records printed."),
) -> None:
    logging.basicConfig(
        level=log_level.value.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if log_level is not LogLevel.DEBUG:
        # Alembic logs each plugin and migration context at INFO on every start.
        logging.getLogger("alembic").setLevel(logging.WARNING)


# Top-level modules that only the ``controller`` extra installs.
CONTROLLER_EXTRA_MODULES = frozenset(
    {
        "alembic",
        "httpx",
        "onnx",
        "onnxscript",
        "rich",
        "scipy",
        "sklearn",
        "sqlalchemy",
        "torch",
        "torch_pruning",
    }
)


def main() -> None:
    try:
        app()
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in CONTROLLER_EXTRA_MODULES:
            raise
        typer.echo(
            f"error: this command needs the controller extra (module {exc.name} is missing); "
            "install it with: pip install 'edgefleet[controller]'",
            err=True,
        )
        raise SystemExit(2) from None
