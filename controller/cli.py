"""``edgefleet controller``: run the controller.

Only typer and the standard library are imported at module level, so the root
``edgefleet`` command starts quickly and works on a device without the controller extra;
SQLAlchemy, gRPC and torch load inside the command.
"""

from __future__ import annotations

import errno
import logging
import signal
import sys
import threading
from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from edgefleet.controller.addresses import is_loopback
from edgefleet.logs import LogFormat, configure_logging

if TYPE_CHECKING:
    from edgefleet.controller.service import Controller

app = typer.Typer(help="Run the fleet controller.", no_args_is_help=True)

logger = logging.getLogger(__name__)

# Maximum lifetime of an enrollment token, in hours: a year.
MAX_TOKEN_TTL_H = 24 * 365
# Environment variable that every --db option reads when the option is not given.
DATABASE_URL_ENV = "EDGEFLEET_DATABASE_URL"
DATABASE_HELP = f"Database URL, also read from {DATABASE_URL_ENV}; default: DATA_DIR/edgefleet.db."
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@app.callback()
def controller_commands() -> None:
    """Run the fleet controller."""
    # A no-op under ``edgefleet``, whose own callback configured logging first.
    logging.basicConfig(level=logging.INFO, format=_LOG_FORMAT)


@app.command("serve")
def serve(
    db: Annotated[
        str | None,
        typer.Option(
            envvar=DATABASE_URL_ENV,
            help="Database URL (sqlite:///FILE or postgresql+psycopg://...), also read from "
            f"{DATABASE_URL_ENV}, which keeps a password out of the process list; "
            "default: DATA_DIR/edgefleet.db.",
        ),
    ] = None,
    grpc_host: Annotated[str, typer.Option(help="Address the gRPC server binds to.")] = (
        "127.0.0.1"
    ),
    grpc_port: Annotated[
        int, typer.Option(help="Port of the gRPC server; 0 picks a free one and prints it.")
    ] = 50051,
    http_host: Annotated[
        str,
        typer.Option(
            help="Address the HTTP API binds to. Requests need a token from `edgefleet "
            "controller api-token create`; serve it off loopback behind a TLS proxy."
        ),
    ] = "127.0.0.1",
    http_port: Annotated[
        int | None,
        typer.Option(
            help="Serve the HTTP API, Prometheus /metrics and the dashboard on this port; "
            "0 picks a free one and prints it. Off by default."
        ),
    ] = None,
    http_max_upload_mb: Annotated[
        float, typer.Option(help="Largest model upload the HTTP API accepts, in MiB.")
    ] = 512.0,
    mqtt_url: Annotated[
        str | None,
        typer.Option(
            help="Also serve devices through this MQTT 5 broker: mqtt://HOST:PORT or "
            "mqtts://HOST:PORT (TLS)."
        ),
    ] = None,
    mqtt_username: Annotated[str | None, typer.Option(help="Broker user name.")] = None,
    mqtt_password_file: Annotated[
        Path | None, typer.Option(help="File holding the broker password.")
    ] = None,
    mqtt_ca_file: Annotated[
        Path | None, typer.Option(help="CA certificate file that signed the broker's certificate.")
    ] = None,
    mqtt_group: Annotated[
        str,
        typer.Option(
            help="Shared-subscription group; controller replicas in one group split ingest."
        ),
    ] = "edgefleet-controllers",
    config: Annotated[
        Path | None, typer.Option(help="Controller TOML file with controller and policy tables.")
    ] = None,
    data_dir: Annotated[
        Path, typer.Option(help="Directory for the default database, artifacts and plans.")
    ] = Path("edgefleet-data"),
    model: Annotated[
        str | None,
        typer.Option(help="Model to register at startup: FILE.onnx or path/to/file.py:factory."),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(help="Evaluation data of --model: .npz with x_train, y_train, x_val, y_val."),
    ] = None,
    weights: Annotated[
        Path | None, typer.Option(help="PyTorch state dict loaded into the --model factory.")
    ] = None,
    log_format: Annotated[
        LogFormat,
        typer.Option(
            help="Log line format on stderr: text, or json (one object a line with "
            "device_id, deployment_id and rollout_id fields)."
        ),
    ] = LogFormat.TEXT,
    tls: Annotated[
        bool,
        typer.Option(
            help="Secure mode: mutual TLS on --grpc-port and an enrollment port; without it "
            "gRPC is plaintext and unauthenticated, for loopback use."
        ),
    ] = False,
    enroll_port: Annotated[
        int, typer.Option(help="Port of the enrollment server (with --tls); 0 picks a free one.")
    ] = 50052,
    tls_name: Annotated[
        list[str] | None,
        typer.Option(
            help="Extra DNS name or IP address for the controller's TLS certificate when it "
            "is first created; repeatable."
        ),
    ] = None,
    mosquitto_password_file: Annotated[
        Path | None,
        typer.Option(help="Mosquitto password file to add enrolled devices to (needs --tls)."),
    ] = None,
    mosquitto_acl_file: Annotated[
        Path | None,
        typer.Option(help="Mosquitto ACL file to add enrolled devices' topics to."),
    ] = None,
) -> None:
    """Serve devices over gRPC (and MQTT with --mqtt-url) until SIGTERM or SIGINT."""
    if log_format is LogFormat.JSON:
        configure_logging(log_format)
    for option, value in (
        ("--grpc-port", grpc_port),
        ("--enroll-port", enroll_port),
        ("--http-port", http_port),
    ):
        if value is not None and not 0 <= value <= 65535:
            _fail(f"{option} {value} is not a port; use 1-65535, or 0 for a free one")
    if not http_max_upload_mb > 0:
        _fail(f"--http-max-upload-mb must be positive, got {http_max_upload_mb:g}")
    if model is not None and data is None:
        _fail("--model needs --data with the evaluation data")
    if model is None and (data is not None or weights is not None):
        _fail("--data and --weights only apply together with --model")
    if (mosquitto_password_file is None) != (mosquitto_acl_file is None):
        _fail("--mosquitto-password-file and --mosquitto-acl-file go together")
    if mosquitto_password_file is not None and not tls:
        _fail("--mosquitto-password-file needs --tls: broker passwords are issued at enrollment")

    from edgefleet.controller.config import ControllerConfig, load_config
    from edgefleet.controller.service import Controller
    from edgefleet.errors import EdgefleetError

    try:
        settings = load_config(config) if config is not None else ControllerConfig()
        broker = None
        if mqtt_url is not None:
            from edgefleet.protos.mqtt import BrokerSettings, shared_filter

            shared_filter(mqtt_group, "check")  # validates the group name
            broker = BrokerSettings.from_options(
                mqtt_url,
                username=mqtt_username,
                password_file=mqtt_password_file,
                ca_file=mqtt_ca_file,
            )
        if http_port is not None:
            from edgefleet.controller.api.auth import check_http_auth

            check_http_auth(settings.http_auth, http_host)
    except EdgefleetError as exc:
        _fail(str(exc))

    controller = Controller(settings, data_dir=data_dir, database_url=db)
    http = None
    stop = threading.Event()
    _install_signal_handlers(stop)
    # What the controller was doing, for an OSError that names only its errno.
    step = "starting"
    try:
        controller.start()
        if model is not None:
            assert data is not None  # checked above
            step = f"registering the model {model}"
            controller.register_model(model, data_path=data, weights_path=weights)
        if mosquitto_password_file is not None and mosquitto_acl_file is not None:
            step = "opening the Mosquitto password and ACL files"
            controller.manage_broker_credentials(mosquitto_password_file, mosquitto_acl_file)
        step = f"listening for gRPC on {grpc_host}:{grpc_port} (--grpc-host, --grpc-port" + (
            f", enrollment on --enroll-port {enroll_port})" if tls else ")"
        )
        port = controller.serve_grpc(
            host=grpc_host,
            port=grpc_port,
            tls=tls,
            enroll_port=enroll_port,
            server_names=tuple(tls_name or ()),
        )
        if broker is not None:
            step = f"connecting to the broker {broker.address.url} (--mqtt-url)"
            controller.serve_mqtt(broker, group=mqtt_group)
        if http_port is not None:
            step = f"listening for HTTP on {http_host}:{http_port} (--http-host, --http-port)"
            http = _start_http(
                controller,
                host=http_host,
                port=http_port,
                max_upload_bytes=int(http_max_upload_mb * 1024 * 1024),
            )
    except EdgefleetError as exc:
        controller.shutdown(grace_s=0)
        _fail(str(exc), code=1)
    except OSError as exc:
        controller.shutdown(grace_s=0)
        # Errors raised by edgefleet itself carry no errno, and their message names the fix.
        detail = str(exc) if exc.errno is None else f"{exc.strerror}; {_os_error_hint(exc)}"
        _fail(f"failed {step}: {detail}", code=1)

    # A parent process (tests, the demo) reads this line to find a port picked with 0.
    typer.echo(f"edgefleet controller listening on {grpc_host}:{port}")
    if tls:
        typer.echo(
            f"edgefleet controller enrolling devices on {grpc_host}:{controller.enroll_port}"
        )
    elif not is_loopback(grpc_host):
        typer.echo(
            f"WARNING: gRPC on {grpc_host}:{port} is PLAINTEXT and UNAUTHENTICATED; "
            "any host that reaches it can pose as any device. Serve with --tls.",
            err=True,
        )
    if broker is not None:
        typer.echo(f"edgefleet controller serving MQTT devices through {broker.address.url}")
    if http is not None:
        typer.echo(f"edgefleet controller HTTP API on http://{http_host}:{http.port}/api/v1")
    sys.stdout.flush()
    stop.wait()
    logger.info("received a stop signal")
    if http is not None:
        http.stop()
    controller.shutdown()


def _os_error_hint(exc: OSError) -> str:
    """Return what to do next about an OSError from binding a port or reaching a broker."""
    if exc.errno == errno.EADDRINUSE:
        return "another process uses that port: stop it or pick another port"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "ports below 1024 need root: pick a port from 1024 up"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "the address is not one of this machine's: bind 127.0.0.1 or 0.0.0.0"
    if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ETIMEDOUT):
        return "start the broker, or fix the URL"
    return "check the address and the options named"


def _start_http(controller: Controller, *, host: str, port: int, max_upload_bytes: int) -> Any:
    """Serve the HTTP API; raises ``OSError`` when the address cannot be bound."""
    from edgefleet.controller.api import HttpServer, create_app
    from edgefleet.controller.api.auth import HttpAuth
    from edgefleet.controller.api_tokens import ApiTokenStore

    web_dir = Path(__file__).parent / "web"
    app = create_app(controller, max_upload_bytes=max_upload_bytes, web_dir=web_dir)
    server = HttpServer(app, host=host, port=port)
    server.start()
    tokens = ApiTokenStore(controller.registry.database).list()
    if controller.config.http_auth == HttpAuth.TOKEN and all(t.revoked_at for t in tokens):
        # The default database lives in the data directory; any other must be named.
        database = "" if controller.database_url.startswith("sqlite:///") else " --db URL"
        logger.warning(
            "no unrevoked API token exists, so the HTTP API rejects every request; create "
            "one with `edgefleet controller api-token create NAME --data-dir %s%s`",
            controller.data_dir,
            database,
        )
    return server


token_app = typer.Typer(help="Manage one-time enrollment tokens.", no_args_is_help=True)
app.add_typer(token_app, name="token")


@token_app.command("create")
def token_create(
    data_dir: Annotated[
        Path, typer.Option(help="The controller's data directory, which contains trust/.")
    ] = Path("edgefleet-data"),
    db: Annotated[str | None, typer.Option(envvar=DATABASE_URL_ENV, help=DATABASE_HELP)] = None,
    ttl: Annotated[float, typer.Option(help="Hours until the token expires unused.")] = 24.0,
    device_id: Annotated[
        str | None, typer.Option(help="Only this device id may use the token.")
    ] = None,
) -> None:
    """Create a one-time enrollment token and print it (it is stored only hashed)."""
    from datetime import timedelta

    from edgefleet.controller.db import open_database
    from edgefleet.controller.enrollment import CertificateRegistry
    from edgefleet.controller.pki import CertificateAuthority, ServerCertificate
    from edgefleet.errors import EdgefleetError
    from edgefleet.ids import validate_device_id

    if not 0 < ttl <= MAX_TOKEN_TTL_H:
        _fail(
            f"--ttl must be a positive number of hours up to {MAX_TOKEN_TTL_H:g} (a year), "
            f"got {ttl:g}; an unused token should not outlive that"
        )
    if not data_dir.is_dir():
        # A mistyped path would otherwise get a new CA that no controller serves with.
        _fail(
            f"data directory {str(data_dir)!r} does not exist; pass the --data-dir of "
            "`controller serve`, or create the directory first to set up a new controller"
        )
    try:
        if device_id is not None:
            validate_device_id(device_id)
        database = open_database(db or f"sqlite:///{data_dir / 'edgefleet.db'}")
        trust_dir = data_dir / "trust"
        trust_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # The same files `serve --tls` creates, so a token may come before the first start.
        CertificateAuthority(trust_dir)
        pin = ServerCertificate(trust_dir).pin
        token = CertificateRegistry(database).create_token(
            ttl=timedelta(hours=ttl), pin=pin, device_id=device_id
        )
        database.close()
    except (EdgefleetError, OSError) as exc:
        _fail(str(exc), code=1)
    typer.echo(token.token)
    typer.echo(
        f"token {token.token_id} expires {token.expires_at.isoformat(timespec='seconds')}"
        + (f", for device {device_id} only" if device_id else ""),
        err=True,
    )


api_token_app = typer.Typer(
    help="Manage the bearer tokens of the HTTP API and /metrics.", no_args_is_help=True
)
app.add_typer(api_token_app, name="api-token")


class ApiRole(StrEnum):
    """Values of ``--role``, the same as ``models.ApiTokenRole``.

    A copy, because importing ``models`` loads SQLAlchemy, which this module defers.
    """

    READ = "read"
    OPERATOR = "operator"


DataDirOption = Annotated[
    Path, typer.Option(help="The controller's data directory, which contains edgefleet.db.")
]
DatabaseOption = Annotated[str | None, typer.Option(envvar=DATABASE_URL_ENV, help=DATABASE_HELP)]


@api_token_app.command("create")
def api_token_create(
    name: Annotated[
        str,
        typer.Argument(help="Name of the user or service of the token, for example prometheus."),
    ],
    role: Annotated[
        ApiRole,
        typer.Option(help="operator: every request; read: GET requests and /metrics only."),
    ] = ApiRole.OPERATOR,
    data_dir: DataDirOption = Path("edgefleet-data"),
    db: DatabaseOption = None,
) -> None:
    """Create an HTTP API token and print it once (it is stored only hashed)."""
    from edgefleet.controller.api_tokens import ApiTokenStore
    from edgefleet.controller.db import open_database
    from edgefleet.controller.models import ApiTokenRole
    from edgefleet.errors import EdgefleetError

    if db is None and not data_dir.is_dir():
        # A mistyped path would otherwise get a new database that no controller reads.
        _fail(
            f"data directory {str(data_dir)!r} does not exist; pass the --data-dir of "
            "`controller serve`, or create the directory first to set up a new controller"
        )
    try:
        database = open_database(db or f"sqlite:///{data_dir / 'edgefleet.db'}")
        try:
            token = ApiTokenStore(database).create(name, role=ApiTokenRole(role.value))
        finally:
            database.close()
    except (EdgefleetError, OSError) as exc:
        _fail(str(exc), code=1)
    typer.echo(token.token)
    typer.echo(f"API token {token.token_id} ({token.name}, role {token.role})", err=True)


@api_token_app.command("list")
def api_token_list(
    data_dir: DataDirOption = Path("edgefleet-data"),
    db: DatabaseOption = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print a JSON list instead of a table.")
    ] = False,
) -> None:
    """List the HTTP API tokens with their role and times; secrets are never shown."""
    import json

    rows = _with_token_store(data_dir, db, lambda store: store.list())
    entries = [
        {
            "id": row.id,
            "name": row.name,
            "role": row.role.value,
            "created_at": _iso(row.created_at),
            "revoked_at": _iso(row.revoked_at),
            "last_used_at": _iso(row.last_used_at),
        }
        for row in rows
    ]
    if json_output:
        typer.echo(json.dumps(entries, indent=2))
        return
    if not entries:
        typer.echo("no API tokens; create one with `edgefleet controller api-token create NAME`")
        return
    columns = ("id", "name", "role", "created_at", "last_used_at", "revoked_at")
    widths = {
        column: max(len(column), *(len(entry[column] or "-") for entry in entries))
        for column in columns
    }
    typer.echo("  ".join(column.ljust(widths[column]) for column in columns).rstrip())
    for entry in entries:
        typer.echo(
            "  ".join((entry[column] or "-").ljust(widths[column]) for column in columns).rstrip()
        )


@api_token_app.command("revoke")
def api_token_revoke(
    token_id: Annotated[str, typer.Argument(help="Id of the token, from `api-token list`.")],
    data_dir: DataDirOption = Path("edgefleet-data"),
    db: DatabaseOption = None,
) -> None:
    """Revoke an HTTP API token; running controllers reject it from the next request."""
    row = _with_token_store(data_dir, db, lambda store: store.revoke(token_id))
    typer.echo(f"revoked API token {row.id} ({row.name})")


def _with_token_store(data_dir: Path, db: str | None, action: Callable[[Any], Any]) -> Any:
    """Run ``action`` on the ``ApiTokenStore`` of an existing controller database."""
    from edgefleet.controller.api_tokens import ApiTokenStore
    from edgefleet.controller.db import open_database
    from edgefleet.errors import EdgefleetError

    url = db or f"sqlite:///{data_dir / 'edgefleet.db'}"
    missing = _missing_sqlite_file(url)
    if missing is not None:
        _fail(
            f"no controller database at {str(missing)!r}; pass the --data-dir or --db of "
            "`controller serve`"
        )
    try:
        database = open_database(url)
        try:
            return action(ApiTokenStore(database))
        finally:
            database.close()
    except (EdgefleetError, OSError) as exc:
        _fail(str(exc), code=1)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat(timespec="seconds")


@app.command("revoke")
def revoke(
    device: Annotated[str, typer.Argument(help="Device id to revoke.")],
    data_dir: Annotated[Path, typer.Option(help="The controller's data directory.")] = Path(
        "edgefleet-data"
    ),
    db: Annotated[str | None, typer.Option(envvar=DATABASE_URL_ENV, help=DATABASE_HELP)] = None,
    reason: Annotated[str, typer.Option(help="Reason recorded with the revocation.")] = (
        "revoked by an operator"
    ),
    mosquitto_password_file: Annotated[
        Path | None, typer.Option(help="Mosquitto password file to remove the device from.")
    ] = None,
    mosquitto_acl_file: Annotated[
        Path | None, typer.Option(help="Mosquitto ACL file to remove the device from.")
    ] = None,
) -> None:
    """Revoke a device's certificates: running controllers refuse it and close its session."""
    from edgefleet.controller.db import open_database
    from edgefleet.controller.enrollment import CertificateRegistry
    from edgefleet.controller.models import EventKind
    from edgefleet.controller.mosquitto import MosquittoCredentials
    from edgefleet.controller.registry import Registry
    from edgefleet.errors import EdgefleetError
    from edgefleet.ids import validate_device_id

    url = db or f"sqlite:///{data_dir / 'edgefleet.db'}"
    missing = _missing_sqlite_file(url)
    if missing is not None:
        # Revoking in a new, empty database would leave the real one trusting the device.
        _fail(
            f"no controller database at {str(missing)!r}; pass the --data-dir or --db of "
            "`controller serve`"
        )
    try:
        validate_device_id(device)
        database = open_database(url)
        count = CertificateRegistry(database).revoke_device(device, reason=reason)
        if count:
            Registry(database).record_event(
                EventKind.REVOKED, device_id=device, reason=reason, details={"certificates": count}
            )
        database.close()
        if mosquitto_password_file is not None and mosquitto_acl_file is not None:
            MosquittoCredentials(mosquitto_password_file, mosquitto_acl_file).remove_device(device)
    except (EdgefleetError, OSError) as exc:
        _fail(str(exc), code=1)
    if count == 0:
        _fail(f"device {device} has no unrevoked certificate", code=1)
    typer.echo(f"revoked {count} certificate(s) of device {device}")


def _missing_sqlite_file(url: str) -> Path | None:
    """Return the file of a SQLite URL when it does not exist, else None."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url == f"{prefix}:memory:":
        return None
    path = Path(url.removeprefix(prefix))
    return None if path.is_file() else path


def _install_signal_handlers(stop: threading.Event) -> None:
    def request_stop(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)


def _fail(message: str, *, code: int = 2) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)
