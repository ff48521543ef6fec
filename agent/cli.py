"""``edgefleet agent``: run the device agent.

Only typer and the standard library are imported at module level, so the root ``edgefleet``
command starts quickly. onnxruntime, gRPC and numpy load inside the command.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from edgefleet.logs import LogFormat, configure_logging

if TYPE_CHECKING:
    from edgefleet.agent.transport import TransportKind

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
    transport: Annotated[
        str,
        typer.Option(help="Transport to the controller: grpc (--controller) or mqtt (--broker)."),
    ] = "grpc",
    controller: Annotated[
        str | None, typer.Option(help="Controller gRPC address as HOST:PORT (gRPC transport).")
    ] = None,
    broker: Annotated[
        str | None,
        typer.Option(
            help="MQTT broker URL, mqtt://HOST:PORT or mqtts://HOST:PORT (MQTT transport)."
        ),
    ] = None,
    mqtt_username: Annotated[
        str | None, typer.Option(help="Broker user name; default: the device id.")
    ] = None,
    mqtt_password_file: Annotated[
        Path | None,
        typer.Option(help="File holding the broker password (not on the command line)."),
    ] = None,
    mqtt_ca_file: Annotated[
        Path | None,
        typer.Option(help="CA certificate file that signed the broker's TLS certificate."),
    ] = None,
    mqtt_keepalive: Annotated[
        int,
        typer.Option(
            help="MQTT keepalive in seconds; the broker shows the device offline after 1.5x."
        ),
    ] = 30,
    log_format: Annotated[
        LogFormat,
        typer.Option(
            help="Log line format on stderr: text, or json (one object a line with "
            "device_id and deployment_id fields)."
        ),
    ] = LogFormat.TEXT,
) -> None:
    """Serve the local model and keep it in sync with the controller until SIGTERM or SIGINT."""
    if log_format is LogFormat.JSON:
        configure_logging(log_format, defaults={"device_id": device_id})
    from edgefleet.agent.daemon import Agent, AgentConfig
    from edgefleet.agent.errors import StorageError
    from edgefleet.agent.identity import DeviceIdentity
    from edgefleet.agent.transport import TransportKind
    from edgefleet.errors import InvalidInputError
    from edgefleet.profiles import load_profile

    try:
        kind = _transport_kind(transport, controller=controller, broker=broker)
        identity = DeviceIdentity.load(state_dir)
        if identity is None:
            logger.warning(
                "%s contains no enrolled identity, so the agent connects without TLS and "
                "accepts unsigned manifests; run `edgefleet enroll` for a production device",
                state_dir,
            )
        settings = None
        if kind is TransportKind.MQTT:
            from edgefleet.protos.mqtt import BrokerSettings

            assert broker is not None  # checked by _transport_kind
            if mqtt_password_file is None and identity is not None and identity.mqtt_password:
                # Broker credentials that the controller issued at enrollment.
                mqtt_password_file = identity.directory / "mqtt-password"
            settings = BrokerSettings.from_options(
                broker,
                username=mqtt_username or device_id,
                password_file=mqtt_password_file,
                ca_file=mqtt_ca_file,
                keepalive_s=mqtt_keepalive,
            )
        config = AgentConfig(
            controller=controller or "",
            device_id=device_id,
            profile=load_profile(profile),
            state_dir=state_dir,
            api_host=api_host,
            api_port=api_port,
            telemetry_interval_s=telemetry_interval,
            transport=kind,
            broker=settings,
            identity=identity if kind is TransportKind.GRPC else None,
        )
        agent = Agent(config)
    except (InvalidInputError, StorageError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except OSError as exc:
        # The state directory and the API port raise StorageError and InvalidInputError
        # with their own fixes, so this is a file the agent reads at start.
        typer.echo(f"error: cannot start the agent: {exc}", err=True)
        raise typer.Exit(2) from None

    def request_stop(signum: int, _frame: object) -> None:
        logger.info("received %s, stopping", signal.Signals(signum).name)
        # Stopping cancels the gRPC call, which takes gRPC's locks; doing that from a
        # thread avoids re-entering them from a handler that interrupted the main thread.
        threading.Thread(target=agent.stop, name="stop").start()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    agent.run()


def _transport_kind(transport: str, *, controller: str | None, broker: str | None) -> TransportKind:
    """Check that the options fit the transport; returns the ``TransportKind``."""
    from edgefleet.agent.transport import TransportKind
    from edgefleet.errors import InvalidInputError

    try:
        kind = TransportKind(transport)
    except ValueError:
        raise InvalidInputError(f"invalid --transport {transport!r}: use grpc or mqtt") from None
    if kind is TransportKind.GRPC and controller is None:
        raise InvalidInputError("--transport grpc needs --controller HOST:PORT")
    if kind is TransportKind.MQTT and broker is None:
        raise InvalidInputError("--transport mqtt needs --broker mqtt://HOST:PORT")
    return kind


def enroll_command(
    controller: Annotated[str, typer.Option(help="The controller's enrollment port as HOST:PORT.")],
    token: Annotated[
        str, typer.Option(help="One-time token from `edgefleet controller token create`.")
    ],
    device_id: Annotated[
        str, typer.Option(help="Stable id of this device: 1-64 of A-Z a-z 0-9 . _ -")
    ],
    state_dir: Annotated[
        Path, typer.Option(help="The agent's state directory; the identity goes in trust/.")
    ],
    force: Annotated[
        bool, typer.Option(help="Replace an identity the state directory already contains.")
    ] = False,
) -> None:
    """Enroll this device: trade a one-time token for a certificate and trusted keys."""
    from edgefleet.agent.enroll import EnrollmentFailed, enroll
    from edgefleet.errors import InvalidInputError

    logging.basicConfig(level=logging.INFO, format=_LOG_FORMAT)
    try:
        identity = enroll(
            controller, token=token, device_id=device_id, state_dir=state_dir, force=force
        )
    except InvalidInputError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except EnrollmentFailed as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"enrolled {identity.device_id}; identity stored in {identity.directory}")
