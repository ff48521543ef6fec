"""Operator commands that talk to a running controller over its HTTP API.

``edgefleet devices``, ``device``, ``telemetry``, ``models``, ``register``, ``variants``,
``deploy``, ``pin``, ``unpin``, ``rollouts ...`` and ``events``. Each prints rich tables, or
the API's JSON with ``--json``. Only typer and the standard library are imported at module level, so
``edgefleet agent run`` still starts on a device without httpx and rich. There, a missing
module surfaces as the root CLI's message about the ``controller`` extra.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec, TypeVar

import typer

from edgefleet.client import DEFAULT_CONTROLLER_URL

if TYPE_CHECKING:
    from edgefleet.client.http import ControllerClient

__all__ = ["register_commands", "rollouts_app"]

ENV_CONTROLLER_URL = "EDGEFLEET_CONTROLLER_URL"
ENV_API_TOKEN = "EDGEFLEET_API_TOKEN"
# Exit codes: 1 when the controller or the API reported a failure, 2 for invalid input.
EXIT_FAILED = 1
EXIT_INVALID_INPUT = 2
# Deployment states in the order an agent reports them; the progress bar counts them.
DEPLOYMENT_STEPS = ("pending", "downloading", "verifying", "loading", "active")
_FAILED_DEPLOYMENT_STATES = frozenset({"failed", "rolled_back", "superseded"})
_TERMINAL_ROLLOUT_STATES = frozenset({"succeeded", "halted", "aborted"})
# events --follow: seconds each long poll waits, and the retry delays while the
# controller is unreachable (doubling from the first up to the last).
FOLLOW_WAIT_S = 30.0
FOLLOW_RETRY_INITIAL_S = 0.5
FOLLOW_RETRY_MAX_S = 10.0
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

ControllerUrl = Annotated[
    str,
    typer.Option(
        "--controller-url",
        envvar=ENV_CONTROLLER_URL,
        help="Base URL of the controller's HTTP API (controller serve --http-port).",
        show_default=True,
    ),
]
ApiToken = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar=ENV_API_TOKEN,
        help="HTTP API token from `edgefleet controller api-token create`. Prefer the "
        f"{ENV_API_TOKEN} environment variable: other local users can read a command line.",
        show_default=False,
    ),
]
JsonOutput = Annotated[
    bool, typer.Option("--json", help="Print the API's JSON on stdout instead of tables.")
]

P = ParamSpec("P")
R = TypeVar("R")


def _handle_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Print the client's errors as one ``error:`` line and exit with 1 or 2."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        from edgefleet.client.http import ClientError
        from edgefleet.errors import InvalidInputError

        try:
            return command(*args, **kwargs)
        except InvalidInputError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(EXIT_INVALID_INPUT) from None
        except ClientError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(EXIT_FAILED) from None

    return run


@contextlib.contextmanager
def _client(url: str, token: str | None) -> Iterator[ControllerClient]:
    from edgefleet.client.http import ControllerClient

    # httpx logs every request at INFO, which would bury the command's own output;
    # --log-level debug still shows them.
    httpx_logger = logging.getLogger("httpx")
    if httpx_logger.level == logging.NOTSET and logging.getLogger().level > logging.DEBUG:
        httpx_logger.setLevel(logging.WARNING)
    with ControllerClient(url, token=token) as client:
        yield client


def _console() -> Any:
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        # Pipes and CI logs have no width; 80 columns would fold every table row.
        console = Console(width=200)
    return console


def _print_json(document: Any) -> None:
    typer.echo(json.dumps(document, indent=2, sort_keys=True))


def parse_since(text: str, *, now: datetime | None = None) -> str:
    """Return an ISO 8601 UTC time for ``10m``, ``2h``, ``30s``, ``1d`` or an ISO time."""
    from edgefleet.errors import InvalidInputError

    match = _DURATION.match(text.strip())
    if match:
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        return ((now or datetime.now(UTC)) - timedelta(seconds=seconds)).isoformat()
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInputError(
            f"invalid time {text!r}: use a duration such as 30s, 10m, 2h or 1d, or an ISO "
            "8601 time such as 2026-01-31T12:00:00+00:00"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.isoformat()


def _device_id(value: str) -> str:
    """Return ``value`` if the agent's ``--device-id`` would accept it.

    An empty id or one with ``/`` would otherwise reach another API route than the
    command meant, which returns a confusing error.
    """
    from edgefleet.ids import validate_device_id

    return validate_device_id(value)


def _not_empty(value: str, *, label: str, listing: str) -> str:
    """Return ``value`` stripped; raise ``InvalidInputError`` naming ``listing`` if empty.

    An empty prefix would match every id.
    """
    from edgefleet.errors import InvalidInputError

    if not value.strip():
        raise InvalidInputError(f"the {label} is empty; pass one, as `{listing}` lists them")
    return value.strip()


# -- devices --------------------------------------------------------------------------


@_handle_errors
def devices_command(
    controller_url: ControllerUrl = DEFAULT_CONTROLLER_URL,
    api_token: ApiToken = None,
    json_output: JsonOutput = False,
) -> None:
    """List the devices: state, budget, variant and the newest telemetry."""
    from edgefleet.client.render import devices_table

    with _client(controller_url, api_token) as client:
        devices = client.devices()
    if json_output:
        _print_json({"devices": devices})
        return
    console = _console()
    if not devices:
        console.print("no device has registered yet; start one with `edgefleet agent run`")
        return
    console.print(devices_table(devices))


@_handle_errors
def device_command(
    device_id: Annotated[str, typer.Argument(help="Device id, as `edgefleet devices` lists.")],
    controller_url: ControllerUrl = DEFAULT_CONTROLLER_URL,
    api_token: ApiToken = None,
    json_output: JsonOutput = False,
) -> None:
    """Show one device: its facts, ladder and newest deployments."""
    from edgefleet.client.render import deployments_table, device_table, ladder_table

    _device_id(device_id)
    with _client(controller_url, api_token) as client:
        device = client.device(device_id)
        ladder = client.ladder(device_id)
        deployments = client.device_deployments(device_id)
    if json_output:
        _print_json({"device": device, "ladder": ladder, "deployments": deployments})
        return
    console = _console()
    console.print(device_table(device))
    if ladder["ladder"]:
        title = f"ladder of {device['profile_name']} (model {ladder['model_id']})"
        console.print(
            ladder_table(ladder["ladder"], current=device["current_variant_id"], title=title)
        )
    else:
        console.print("no ladder yet: the planner has not finished for this profile")
    newest = sorted(deployments, key=lambda d: d["created_at"], reverse=True)[:5]
    if newest:
        console.print(deployments_table(newest, title="newest deployments"))


@_handle_errors
def telemetry_command(
    device_id: Annotated[str, typer.Argument(help="Device id, as `edgefleet devices` lists.")],
    since: Annotated[
        str,
        typer.Option(
            help="Start of the range: a duration back from now (30s, 10m, 2h, 1d) or an ISO time."
        ),
    ] = "10m",
    step: Annotated[
        int | None, typer.Option(help="Average samples into buckets of this many seconds.")
    ] = None,
    limit: Annotated[
        int, typer.Option(help="Maximum number of points returned; the newest are kept.")
    ] = 200,
    controller_url: ControllerUrl = DEFAULT_CONTROLLER_URL,
    api_token: ApiToken = None,
    json_output: JsonOutput = False,
) -> None:
    """Print a device's telemetry: resource figures and served latency percentiles."""
    from edgefleet.client.render import telemetry_table

    _device_id(device_id)
    start = parse_since(since)
    with _client(controller_url, api_token) as client:
        history = client.telemetry(device_id, since=start, step_s=step, limit=limit)
    if json_output:
        _print_json(history)
        return
    console = _console()
    if not history["points"]:
        console.print(f"no telemetry from {device_id} since {start}; try a longer --since")
        return
    console.print(telemetry_table(history))


# -- models ---------------------------------------------------------------------------


@_handle_errors
def models_command(
    controller_url: ControllerUrl = DEFAULT_CONTROLLER_URL,
    api_token: ApiToken = None,
    json_output: JsonOutput = False,
) -> None:
    """List the registered models and the state of their plans per profile."""
    from edgefleet.client.render import models_table

    with _client(controller_url, api_token) as client:
        models = client.models()
    if json_output:
        _print_json(models)
        return
    _console().print(models_table(models))


@_handle_errors
def register_command(
    model: Annotated[Path, typer.Argument(help="The trained model, exported to ONNX.")],
    data: Annotated[
        Path,
        typer.Option(help="Evaluation data: an .npz with x_train, y_train, x_val and y_val."),
    ],
    name: Annotated[
        str | None, typer.Option(help="Display name; default: the model's file name.")
    ] = None,
    controller_url: ControllerUrl = DEFAULT_CONTROLLER_URL,
    api_token: ApiToken = None,
    json_output: JsonOutput = False,
) -> None:
    """Upload a model and its evaluation data; the controller then plans it per profile."""
    from edgefleet.errors import InvalidInputError

    for option, path in (("MODEL", model), ("--data", data)):
        if path.is_dir():
            raise InvalidInputError(
                f"{option} {str(path)!r} is a directory; pass the path of a file in it"
            )
        if not path.is_file():
            raise InvalidInputError(
                f"{option} file {str(path)!r} not found; pass the path of an existing file"
            )
    with tempfile.TemporaryDirectory(prefix="edgefleet-register-") as scratch:
        upload = _one_file_model(model, Path(scratch))
        with _client(controller_url, api_token) as client:
            registered = client.register_model(upload, data, name=name)
    if json_output:
        _print_json(registered)
        return
    _console().print(
        f"registered model {registered['model_id']} ({registered['name']}); the controller "
        "compresses it for every profile: `edgefleet models` shows the plans"
    )


def _one_file_model(model: Path, scratch: Path) -> Path:
    """Return ``model``, or a copy in ``scratch`` with its external data inlined.

    The upload carries one model file, so weights kept beside it would not reach the
    controller. Without onnx installed the model is uploaded as it is.
    """
    try:
        from edgefleet.onnx_files import inline_external_data

        single = inline_external_data(model, scratch)
    except ModuleNotFoundError as exc:
        if exc.name != "onnx":
            raise
        return model
    return single or model


def _resolve_model(client: ControllerClient, text: str) -> str:
    """Return the model id that starts with ``text``, as `edgefleet models` lists them."""
    from edgefleet.errors import InvalidInputError

    text = _not_empty(text, label="model id", listing="edgefleet models")
    matches = [m["model_id"] for m in client.models()["models"] if m["model_id"].startswith(text)]
    if len(matches) > 1:
        raise InvalidInputError(
            f"model prefix {text!r} matches {len(matches)} models ({', '.join(matches)}); "
            "give more characters"
        )
    return matches[0] if matches else text


@_handle_errors
def variants_command(
    model_id: Annotated[
        str | None,
        typer.Argument(
            help="Model id or a unique prefix of it (`edgefleet models`); default: the active one."
        ),
    ] = None,
    profile: Annotated[str | None, typer.Option(help="Only this profile name.")] = None,
    controller_url: ControllerUrl = DEFAULT_CONTROLLER_URL,
    api_token: ApiToken = None,
    json_output: JsonOutput = False,
) -> None:
    """List a model's variants per profile: ladder rung, Pareto front, accuracy, latency."""
    from edgefleet.client.render import variants_tables
    from edgefleet.errors import InvalidInputError

    with _client(controller_url, api_token) as client:
        if model_id is None:
            model_id = client.models()["active_model_id"]
            if model_id is None:
                raise InvalidInputError(
                    "no model is registered; start the controller with --model and --data"
                )
        else:
            model_id = _resolve_model(client, model_id)
        variants = client.variants(model_id, profile=profile)
    if json_output:
        _print_json(variants)
        return
    console = _console()
    for table in variants_tables(variants):
        console.print(table)


# -- deployments ----------------------------------------------------------------------


def _resolve_variant(client: ControllerClient, device_id: str, text: str) -> str:
    """Return the variant of the device's profile whose id starts with ``text``.

    Returns ``text`` unchanged when nothing matches, so that the API's error names it.
    """
    from edgefleet.errors import InvalidInputError

    device = client.device(device_id)
    model_id = client.models()["active_model_id"]
    if model_id is None:
        return text
    profiles = client.variants(model_id, profile=device["profile_name"])["profiles"]
    matches = sorted(
        {
            variant["variant_id"]
            for profile in profiles
            for variant in profile["variants"]
            if variant["variant_id"].startswith(text)
        }
    )
    if len(matches) > 1:
        raise InvalidInputError(
            f"variant prefix {text!r} matches {len(matches)} variants of {device_id} "
            f"({', '.join(matches)}); give more characters"
        )
    return matches[0] if matches else text


@_handle_errors
def deploy_command(
    device_id: Annotated[str, typer.Argument(help="Device id, as `edgefleet devices` lists.")],
    variant_id: Annotated[
        str,
        typer.Argument(
            help="Variant id, or a unique prefix of one (`edgefleet variants` lists them)."
        ),
    ],
    reason: Annotated[str, typer.Option(help="Recorded with the deployment.")] = (
        "deployed with edgefleet deploy"
    ),
    wait: Annotated[
        bool, typer.Option(help="Wait until the device reports the deployment active or failed.")
    ] = True,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits at most.")] = 300.0,
    controller_url: ControllerUrl = DEFAULT_CONTROLLER_URL,
    api_token: ApiToken = None,
    json_output: JsonOutput = False,
) -> None:
    """Deploy a variant to a device and follow the transfer until the device runs it."""
    _device_id(device_id)
    _not_empty(variant_id, label="variant id", listing="edgefleet variants")
    with _client(controller_url, api_token) as client:
        variant = _resolve_variant(client, device_id, variant_id)
        deployment = client.deploy(device_id, variant, reason=reason)
        if wait:
            deployment = _follow_deployment(
                client, deployment, timeout_s=timeout, quiet=json_output
            )
    if json_output:
        _print_json(deployment)
    else:
        _console().print(
            f"deployment {deployment['deployment_id']} of {deployment['variant_id']} to "
            f"{device_id}: {deployment['state']}"
        )
    if deployment["state"] in _FAILED_DEPLOYMENT_STATES:
        typer.echo(
            f"error: the deployment ended {deployment['state']}: {deployment['reason']}", err=True
        )
        raise typer.Exit(EXIT_FAILED)
    if wait and deployment["state"] != "active":
        typer.echo(
            f"error: the deployment is still {deployment['state']} after {timeout:g} s; "
            f"follow it with `edgefleet device {device_id}`",
            err=True,
        )
        raise typer.Exit(EXIT_FAILED)


def _follow_deployment(
    client: ControllerClient, deployment: dict[str, Any], *, timeout_s: float, quiet: bool
) -> dict[str, Any]:
    """Poll the deployment with a progress bar over its states until it ends or times out."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    deadline = time.monotonic() + timeout_s
    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True, disable=quiet) as bar:
        task = bar.add_task("pending", total=len(DEPLOYMENT_STEPS))
        while True:
            state = deployment["state"]
            done = DEPLOYMENT_STEPS.index(state) + 1 if state in DEPLOYMENT_STEPS else 0
            bar.update(task, completed=done, description=f"{deployment['device_id']}: {state}")
            if state == "active" or state in _FAILED_DEPLOYMENT_STATES:
                return deployment
            if time.monotonic() >= deadline:
                return deployment
            time.sleep(0.25)
            deployment = client.deployment(deployment["deployment_id"])


@_handle_errors
def pin_command(
    device_id: Annotated[str, typer.Argument(help="Device id, as `edgefleet devices` lists.")],
    variant_id: Annotated[
        str | None,
        typer.Option("--variant", help="Deploy this variant first; default: keep the target."),
    ] = None,
    reason: Annotated[
        str, typer.Option(help="Recorded with the pin.")
    ] = "pinned with edgefleet pin",
    controller_url: ControllerUrl = DEFAULT_CONTROLLER_URL,
    api_token: ApiToken = None,
    json_output: JsonOutput = False,
) -> None:
    """Pin a device to its target variant, so that the policy engine leaves it alone."""
    _device_id(device_id)
    with _client(controller_url, api_token) as client:
        variant = _resolve_variant(client, device_id, variant_id) if variant_id else None
        device = client.pin(device_id, variant_id=variant, reason=reason)
    if json_output:
        _print_json(device)
        return
    _console().print(f"{device_id} is pinned to {device['desired_variant_id']}")


@_handle_errors
def unpin_command(
    device_id: Annotated[str, typer.Argument(help="Device id, as `edgefleet devices` lists.")],
    controller_url: ControllerUrl = DEFAULT_CONTROLLER_URL,
    api_token: ApiToken = None,
    json_output: JsonOutput = False,
) -> None:
    """Unpin a device, so that the policy engine manages it again."""
    _device_id(device_id)
    with _client(controller_url, api_token) as client:
        device = client.unpin(device_id)
    if json_output:
        _print_json(device)
        return
    _console().print(f"{device_id} is unpinned")


# -- events ---------------------------------------------------------------------------


@_handle_errors
def events_command(
    device: Annotated[str | None, typer.Option(help="Only events of this device.")] = None,
    kind: Annotated[
        list[str] | None,
        typer.Option(help="Only events of this kind (repeatable), e.g. stepped_down."),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Only events after this: a duration (10m, 2h) or an ISO time."),
    ] = None,
    limit: Annotated[
        int,
        typer.Option(min=1, max=1000, help="Maximum number of events printed before following."),
    ] = 50,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events until interrupted.")
    ] = False,
    controller_url: ControllerUrl = DEFAULT_CONTROLLER_URL,
    api_token: ApiToken = None,
    json_output: JsonOutput = False,
) -> None:
    """Print the controller's events, oldest first; with --follow, new ones as they happen.

    With --json and --follow, each event is one JSON object a line. --follow keeps
    retrying while the controller is unreachable or restarting, until interrupted.
    """
    from edgefleet.client.render import event_line, events_table

    if device is not None:
        _device_id(device)
    start = parse_since(since) if since is not None else None
    console = _console()
    with _client(controller_url, api_token) as client:
        if not follow:
            page = client.events(device_id=device, kinds=kind, since=start, limit=limit)
            if json_output:
                _print_json(page)
            elif page["events"]:
                console.print(events_table(page["events"]))
            else:
                console.print("no events match")
            return

        def show(events: list[dict[str, Any]]) -> None:
            for event in events:
                if json_output:
                    typer.echo(json.dumps(event, sort_keys=True))
                else:
                    console.print(event_line(event))

        with contextlib.suppress(KeyboardInterrupt):
            page = _retrying(
                client,
                lambda: client.events(device_id=device, kinds=kind, since=start, limit=limit),
            )
            show(page["events"])
            last_id = page["last_id"] or 0
            while True:
                page = _retrying(
                    client,
                    functools.partial(
                        client.events,
                        device_id=device,
                        kinds=kind,
                        after_id=last_id,
                        wait_s=FOLLOW_WAIT_S,
                    ),
                )
                show(page["events"])
                last_id = page["last_id"] or last_id


def _retrying(client: ControllerClient, request: Callable[[], R]) -> R:
    """Return ``request()``, retrying while the controller is down.

    When the controller is unreachable, or returns a server error while it stops or
    restarts, print one warning on stderr and retry with a doubling delay up to 10 s.
    """
    from edgefleet.client.http import ApiResponseError, ControllerUnreachableError

    delay = FOLLOW_RETRY_INITIAL_S
    failing = False
    while True:
        try:
            result = request()
        except (ControllerUnreachableError, ApiResponseError) as exc:
            if isinstance(exc, ApiResponseError) and exc.status < 500:
                raise
            if not failing:
                cause = exc.cause if isinstance(exc, ControllerUnreachableError) else str(exc)
                typer.echo(
                    f"warning: the controller at {client.base_url} does not respond ({cause}); "
                    "retrying until it does, Ctrl-C stops",
                    err=True,
                )
                failing = True
            time.sleep(delay)
            delay = min(delay * 2, FOLLOW_RETRY_MAX_S)
            continue
        if failing:
            typer.echo(f"the controller at {client.base_url} responds again", err=True)
        return result


# -- rollouts -------------------------------------------------------------------------

rollouts_app = typer.Typer(
    help="List, start, pause, resume and abort staged rollouts.", no_args_is_help=True
)


def _resolve_rollout(client: ControllerClient, text: str) -> str:
    """Return the rollout id that starts with ``text``, as the list shows them."""
    from edgefleet.errors import InvalidInputError

    text = _not_empty(text, label="rollout id", listing="edgefleet rollouts list")
    matches = [r["rollout_id"] for r in client.rollouts() if r["rollout_id"].startswith(text)]
    if len(matches) > 1:
        raise InvalidInputError(
            f"rollout prefix {text!r} matches {len(matches)} rollouts; give more characters"
        )
    return matches[0] if matches else text


@rollouts_app.command("list")
@_handle_errors
def rollouts_list(
    state: Annotated[
        list[str] | None,
        typer.Option(help="Only rollouts in this state (repeatable), e.g. running."),
    ] = None,
    controller_url: ControllerUrl = DEFAULT_CONTROLLER_URL,
    api_token: ApiToken = None,
    json_output: JsonOutput = False,
) -> None:
    """List rollouts, newest first."""
    from edgefleet.client.render import rollouts_table

    with _client(controller_url, api_token) as client:
        rollouts = client.rollouts(states=state)
    if json_output:
        _print_json({"rollouts": rollouts})
        return
    console = _console()
    if not rollouts:
        console.print("no rollouts; start one with `edgefleet rollouts start`")
        return
    console.print(rollouts_table(rollouts))


@rollouts_app.command("show")
@_handle_errors
def rollouts_show(
    rollout_id: Annotated[str, typer.Argument(help="Rollout id or a unique prefix of it.")],
    controller_url: ControllerUrl = DEFAULT_CONTROLLER_URL,
    api_token: ApiToken = None,
    json_output: JsonOutput = False,
) -> None:
    """Show one rollout with the state of each of its devices."""
    from edgefleet.client.render import rollout_table

    with _client(controller_url, api_token) as client:
        rollout = client.rollout(_resolve_rollout(client, rollout_id))
    if json_output:
        _print_json(rollout)
        return
    _console().print(rollout_table(rollout))


def _parse_pairs(values: list[str], *, option: str) -> dict[str, str]:
    from edgefleet.errors import InvalidInputError

    pairs = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key.strip() or not rest.strip():
            raise InvalidInputError(f"invalid {option} {value!r}: use KEY=VALUE")
        pairs[key.strip()] = rest.strip()
    return pairs


def _parse_gates(values: list[str]) -> dict[str, float | int]:
    from edgefleet.errors import InvalidInputError

    gates: dict[str, float | int] = {}
    for key, text in _parse_pairs(values, option="--gate").items():
        try:
            # Counts such as min_samples must stay integers for the API's validation.
            gates[key] = int(text) if text.lstrip("-").isdigit() else float(text)
        except ValueError:
            raise InvalidInputError(
                f"invalid --gate {key}={text!r}: the value must be a number"
            ) from None
        if not math.isfinite(gates[key]):
            # JSON has no infinity or NaN, and 1e400 reads as infinity.
            raise InvalidInputError(
                f"invalid --gate {key}={text!r}: the value must be a finite number"
            )
    return gates


@rollouts_app.command("start")
@_handle_errors
def rollouts_start(
    target: Annotated[
        str, typer.Option(help="Devices to cover: all, profile:NAME or devices:ID,ID,...")
    ] = "all",
    model: Annotated[
        str | None,
        typer.Option(
            help="Model id or a unique prefix of it to roll out; default: the active model."
        ),
    ] = None,
    waves: Annotated[
        str | None,
        typer.Option(help="Cumulative wave sizes, e.g. 1,25%,100%; default 1, 25%, 100%."),
    ] = None,
    variant: Annotated[
        list[str] | None,
        typer.Option(help="PROFILE=VARIANT to deploy instead of the starting rung (repeatable)."),
    ] = None,
    gate: Annotated[
        list[str] | None,
        typer.Option(
            help="Health gate setting KEY=NUMBER (repeatable): max_failure_rate, "
            "max_p95_regression, soak_s, min_samples, baseline_s or deploy_timeout_s."
        ),
    ] = None,
    online_only: Annotated[
        bool,
        typer.Option(
            "--online-only",
            help="Leave out the target devices that are offline now. Otherwise an offline "
            "device that does not come back within deploy_timeout_s fails its wave.",
        ),
    ] = False,
    wait: Annotated[bool, typer.Option(help="Follow the rollout until it ends.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits at most.")] = 3600.0,
    controller_url: ControllerUrl = DEFAULT_CONTROLLER_URL,
    api_token: ApiToken = None,
    json_output: JsonOutput = False,
) -> None:
    """Start a staged rollout: the first wave is the canary; each wave is gated on health."""
    from edgefleet.client.render import rollout_table

    body: dict[str, Any] = {"target": target}
    if waves is not None:
        body["waves"] = waves
    if variant:
        body["variants"] = _parse_pairs(variant, option="--variant")
    if gate:
        body["gates"] = _parse_gates(gate)
    if online_only:
        body["online_only"] = True
    with _client(controller_url, api_token) as client:
        if model is not None:
            body["model_id"] = _resolve_model(client, model)
        started = client.start_rollout(body)
        _warn_about_start(started)
        rollout = started
        if wait:
            rollout = _follow_rollout(client, started, timeout_s=timeout, quiet=json_output)
    if json_output:
        _print_json(rollout)
    else:
        _console().print(rollout_table(rollout))
        _print_start_summary(started)
    if wait and rollout["state"] not in _TERMINAL_ROLLOUT_STATES:
        typer.echo(
            f"error: --wait timed out after {timeout:g} s; rollout {rollout['rollout_id']} is "
            f"still {rollout['state']} and keeps going: follow it with `edgefleet rollouts "
            f"show {rollout['rollout_id']}`, or stop it with `edgefleet rollouts abort`",
            err=True,
        )
        raise typer.Exit(EXIT_FAILED)
    if wait and rollout["state"] != "succeeded":
        reason = f": {rollout['reason']}" if rollout.get("reason") else ""
        typer.echo(f"error: rollout {rollout['rollout_id']} {rollout['state']}{reason}", err=True)
        raise typer.Exit(EXIT_FAILED)


def _first_ids(ids: list[str], *, limit: int = 5) -> str:
    text = ", ".join(ids[:limit])
    return text + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def _warn_about_start(rollout: dict[str, Any]) -> None:
    """Warn on stderr about offline target devices, before a --wait starts following."""
    offline = rollout.get("offline_device_ids") or []
    if offline:
        timeout_s = rollout["gates"]["deploy_timeout_s"]
        typer.echo(
            f"warning: {len(offline)} target device(s) are offline: {_first_ids(offline)}. An "
            f"offline device that does not come back within deploy_timeout_s ({timeout_s:g} s) "
            "fails its wave, which halts the rollout by default; --online-only leaves them out",
            err=True,
        )


def _print_start_summary(rollout: dict[str, Any]) -> None:
    """Print how many target devices are offline or were left out, and whether the first
    wave changes anything.
    """
    console = _console()
    offline = rollout.get("offline_device_ids") or []
    left_out = rollout.get("left_out_device_ids") or []
    console.print(
        f"{len(rollout['devices'])} target device(s), {len(offline)} of them offline"
        + (
            f"; {len(left_out)} offline device(s) left out: {_first_ids(left_out)}"
            if left_out
            else ""
        )
    )
    first = [d for d in rollout["devices"] if d["wave"] == 0]
    if first and all(d["variant_id"] == d["previous_variant_id"] for d in first):
        console.print(
            "note: every device of the first wave already serves its target variant, so that "
            "wave deploys nothing and tests no update"
        )


def _follow_rollout(
    client: ControllerClient, rollout: dict[str, Any], *, timeout_s: float, quiet: bool
) -> dict[str, Any]:
    """Poll the rollout with a progress bar of its devices until it ends or times out."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    deadline = time.monotonic() + timeout_s
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True, disable=quiet) as bar:
        task = bar.add_task("rollout", total=len(rollout["devices"]) or None)
        while True:
            devices = rollout["devices"]
            done = sum(1 for device in devices if device["state"] in ("updated", "unchanged"))
            wave = rollout["current_wave"] + 1
            bar.update(
                task,
                completed=done,
                total=len(devices) or None,
                description=f"{rollout['state']}, wave {wave} of {len(rollout['waves'])}",
            )
            if rollout["state"] in _TERMINAL_ROLLOUT_STATES or time.monotonic() >= deadline:
                return rollout
            time.sleep(1.0)
            rollout = client.rollout(rollout["rollout_id"])


def _run_rollout_action(
    action: str,
    rollout_id: str,
    reason: str | None,
    controller_url: str,
    api_token: str | None,
    json_output: bool,
) -> None:
    with _client(controller_url, api_token) as client:
        rollout = client.rollout_action(_resolve_rollout(client, rollout_id), action, reason=reason)
    if json_output:
        _print_json(rollout)
        return
    _console().print(f"rollout {rollout['rollout_id']} is {rollout['state']}")


def _rollout_action(action: str) -> Callable[..., None]:
    """Build the ``pause`` or ``abort`` command, which records ``--reason`` in its event."""

    @_handle_errors
    def command(
        rollout_id: Annotated[str, typer.Argument(help="Rollout id or a unique prefix of it.")],
        reason: Annotated[str | None, typer.Option(help="Recorded in the rollout's event.")] = None,
        controller_url: ControllerUrl = DEFAULT_CONTROLLER_URL,
        api_token: ApiToken = None,
        json_output: JsonOutput = False,
    ) -> None:
        _run_rollout_action(action, rollout_id, reason, controller_url, api_token, json_output)

    return command


@_handle_errors
def _resume_command(
    rollout_id: Annotated[str, typer.Argument(help="Rollout id or a unique prefix of it.")],
    controller_url: ControllerUrl = DEFAULT_CONTROLLER_URL,
    api_token: ApiToken = None,
    json_output: JsonOutput = False,
) -> None:
    _run_rollout_action("resume", rollout_id, None, controller_url, api_token, json_output)


_ROLLOUT_ACTIONS = {
    "pause": "Pause a rollout: no new deployments start; those in flight finish.",
    "resume": "Resume a paused rollout.",
    "abort": "Abort a rollout and send every device it updated back to its previous variant.",
}
for _action, _help in _ROLLOUT_ACTIONS.items():
    # Pause and abort record a reason in their event, but resume takes none.
    _command = _resume_command if _action == "resume" else _rollout_action(_action)
    rollouts_app.command(_action, help=_help)(_command)


def register_commands(app: typer.Typer) -> None:
    """Add the operator commands to the root ``edgefleet`` app."""
    app.command("devices")(devices_command)
    app.command("device")(device_command)
    app.command("telemetry")(telemetry_command)
    app.command("models")(models_command)
    app.command("register")(register_command)
    app.command("variants")(variants_command)
    app.command("deploy")(deploy_command)
    app.command("pin")(pin_command)
    app.command("unpin")(unpin_command)
    app.command("events")(events_command)
    app.add_typer(rollouts_app, name="rollouts")
