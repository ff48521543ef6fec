"""``edgefleet compress``: plan and write the variants of one model for one profile.

Only typer and the standard library are imported at module level. Torch, onnx and
onnxruntime load inside the command, so the root CLI starts on devices without them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import typer

from edgefleet.errors import EdgefleetError, InvalidInputError

__all__ = ["compress_command"]

# Exit codes: 2 for invalid input the user can fix (typer uses 2 for usage errors too),
# 1 for a compression that failed on valid input, 3 when every variant was written but
# none meets the profile's budget.
EXIT_INVALID_INPUT = 2
EXIT_FAILED = 1
EXIT_NO_VARIANT_FITS = 3


def compress_command(
    model: str = typer.Argument(
        ...,
        help="An .onnx file, or 'path/to/file.py:factory' returning a torch.nn.Module. It "
        "must be a classifier with one float32 input whose first dimension is the batch.",
    ),
    data: Path = typer.Option(
        ...,
        "--data",
        help=".npz file with float arrays x_train and x_val, and integer class labels "
        "y_train and y_val.",
    ),
    profile: Path = typer.Option(..., "--profile", help="Device profile TOML file."),
    out: Path = typer.Option(
        ..., "--out", help="Directory for variant .onnx files and report.json."
    ),
    json_output: bool = typer.Option(False, "--json", help="Print the report as JSON to stdout."),
    weights: Path | None = typer.Option(
        None, "--weights", help="State dict (torch.save) to load into the factory's model."
    ),
    latency_scale: float = typer.Option(
        1.0,
        "--latency-scale",
        help="Device p95 latency per host millisecond (device p50 / host p50 of a reference).",
    ),
    search_seconds: float | None = typer.Option(
        None,
        "--search-seconds",
        help="Run architecture search for about this many seconds and plan its best "
        "candidates too (torch models only).",
    ),
) -> None:
    """Compress MODEL for one device profile and write every verified variant to OUT."""
    try:
        report = _run(model, data, profile, out, weights, latency_scale, search_seconds)
    except InvalidInputError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_INVALID_INPUT) from None
    except EdgefleetError as exc:
        typer.echo(f"compression failed: {exc}", err=True)
        raise typer.Exit(EXIT_FAILED) from None
    except ModuleNotFoundError:
        raise  # edgefleet's main names the missing extra
    except Exception as exc:  # torch, onnx and onnxruntime errors the planner did not wrap
        logging.getLogger(__name__).debug("compression failed", exc_info=True)
        message = " ".join(str(exc).split())
        typer.echo(
            f"compression failed: {type(exc).__name__}: {message}; run "
            "'edgefleet --log-level debug compress ...' to log the traceback",
            err=True,
        )
        raise typer.Exit(EXIT_FAILED) from None

    report_json = json.dumps(report, indent=2, sort_keys=True)
    (out / "report.json").write_text(report_json + "\n", encoding="utf-8")
    if json_output:
        typer.echo(report_json)
    else:
        _print_table(report)
    if report["chosen"] is None:
        typer.echo(
            f"error: no variant meets the budget of {report['profile']['name']}; the "
            f"variants and report.json are in {out}",
            err=True,
        )
        raise typer.Exit(EXIT_NO_VARIANT_FITS)


def _run(
    model: str,
    data: Path,
    profile_path: Path,
    out: Path,
    weights: Path | None,
    latency_scale: float,
    search_seconds: float | None = None,
) -> dict[str, Any]:
    from edgefleet.profiles import load_profile

    if not (latency_scale > 0 and latency_scale != float("inf")):
        raise InvalidInputError(
            f"invalid --latency-scale {latency_scale}; pass a positive number such as 1.0"
        )
    if search_seconds is not None and not (0 < search_seconds < float("inf")):
        raise InvalidInputError(
            f"invalid --search-seconds {search_seconds}; pass a positive number such as 120"
        )
    device_profile = load_profile(profile_path)
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"--out {out} is a file; pass a folder for the variants")

    # Heavy imports only now, after the cheap checks.
    from edgefleet.compress.dataset import load_dataset
    from edgefleet.compress.modelio import load_onnx_model, load_torch_model
    from edgefleet.compress.planner import plan

    dataset = load_dataset(data)
    if model.endswith(".onnx"):
        if weights is not None:
            raise InvalidInputError("--weights applies to torch factories, not to .onnx models")
        # A model with external-data files is planned from a one-file copy in OUT/source.
        source: Any = load_onnx_model(model, inline_dir=out / "source")
    else:
        source = load_torch_model(model, weights=weights)
    out.mkdir(parents=True, exist_ok=True)
    with _progress_bar() as (log_line, on_step):
        result = plan(
            source,
            dataset,
            device_profile,
            out_dir=out,
            latency_scale=latency_scale,
            progress=log_line,
            on_step=on_step,
            search_seconds=search_seconds,
        )
    return result.to_dict()


@contextlib.contextmanager
def _progress_bar() -> Iterator[tuple[Callable[[str], None], Callable[[int, int, str], None]]]:
    """Show a rich progress bar of the plan's variants on stderr, with its log lines above.

    Every line also goes to stderr as plain text, so the bar changes nothing for scripts
    that read stderr; stdout stays free for ``--json``.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("planning", total=None)

        def log_line(line: str) -> None:
            progress.console.print(line, markup=False, highlight=False)

        def on_step(done: int, total: int, label: str) -> None:
            progress.update(task, completed=done, total=total, description=label[:60])

        yield log_line, on_step


def _print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    profile = report["profile"]
    table = Table(
        title=(
            f"{profile['name']}: p95 <= {profile['latency_budget_ms']:g} ms, "
            f"memory <= {profile['model_memory_budget_mb']} MB"
        )
    )
    # Only the recipe column wraps, so a narrow terminal keeps every number on its row.
    table.add_column("variant", no_wrap=True, min_width=18)
    table.add_column("recipe", ratio=1)
    for column in ("accuracy", "size KiB", "p95 ms", "memory MB", "fits"):
        table.add_column(column, justify="right", no_wrap=True, min_width=len(column))
    for variant in [report["baseline"], *report["variants"]]:
        marker = " *" if variant["variant_id"] == report["chosen"] else ""
        table.add_row(
            variant["variant_id"] + marker,
            variant["name"],
            f"{variant['accuracy']:.4f}",
            f"{variant['size_bytes'] / 1024:.1f}",
            f"{variant['latency_p95_ms']:.3f}",
            f"{variant['peak_memory_mb']:.1f}",
            "yes" if variant["meets_budget"] else "no",
        )
    console = Console(file=sys.stdout)
    if not console.is_terminal:
        # Pipes have no width, and rich's default of 80 columns cuts the recipe names short.
        console = Console(file=sys.stdout, width=200)
    console.print(table)
    console.print(report["reason"])
    for note in report["notes"]:
        console.print(f"note: {note}")
