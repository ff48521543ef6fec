"""Measure the HTTP API's read paths on a controller holding a day of fleet telemetry.

Run with ``python benchmarks/api_bench.py --devices 100 --hours 8 --out docs/benchmarks.md``.
It starts a ``Controller`` on SQLite in a temporary folder and registers ``--devices``
devices of one profile. Through ``Registry.add_telemetry_many`` it stores one sample every
10 s per device for ``--hours`` hours. Then it serves the API on loopback and times, over
real HTTP, a Prometheus scrape of ``/metrics``, the device list, and one device's telemetry
history, raw and downsampled in SQL.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fleet_bench import machine_description, replace_section

from edgefleet.controller.api import HttpServer, create_app
from edgefleet.controller.api.auth import HttpAuth
from edgefleet.controller.api_tokens import ApiTokenStore
from edgefleet.controller.config import ControllerConfig
from edgefleet.controller.models import ApiTokenRole
from edgefleet.controller.service import Controller
from edgefleet.controller.telemetry import TelemetryRecord
from edgefleet.profiles import parse_profile

PROFILE = {
    "name": "bench-board",
    "cpu_arch": "aarch64",
    "cpu_cores": 4,
    "cpu_flags": ["neon", "asimd"],
    "memory_mb": 4096,
    "model_memory_budget_mb": 256,
    "latency_budget_ms": 20.0,
}
INTERVAL_S = 10


def sample(device_id: str, at: datetime, index: int) -> TelemetryRecord:
    return TelemetryRecord(
        device_id=device_id,
        seq=index,
        sampled_at=at,
        received_at=at,
        variant_id="v0",
        cpu_percent=20.0 + index % 50,
        memory_total_mb=4096.0,
        memory_available_mb=2000.0 - index % 100,
        load_1m=0.5,
        load_5m=0.5,
        load_15m=0.5,
        disk_free_mb=10_000.0,
        temperature_c=50.0 + index % 10,
        agent_rss_mb=60.0,
        requests=10,
        latency_p50_ms=4.0,
        latency_p95_ms=8.0 + index % 7,
        latency_p99_ms=12.0,
        throughput_rps=10.0,
        window_s=float(INTERVAL_S),
    )


def fill(controller: Controller, *, devices: int, hours: float) -> int:
    profile = parse_profile(PROFILE)
    count = int(hours * 3600 / INTERVAL_S)
    start = datetime.now(UTC) - timedelta(hours=hours)
    for number in range(devices):
        device_id = f"bench-{number:04d}"
        controller.registry.register_device(device_id, profile)
        records = [
            sample(device_id, start + timedelta(seconds=i * INTERVAL_S), i) for i in range(count)
        ]
        controller.registry.add_telemetry_many(records)
    return devices * count


def time_get(client: httpx.Client, url: str, *, repeats: int) -> tuple[float, float, int]:
    """Return the median and max wall time in ms of ``repeats`` GETs, and the body size."""
    timings = []
    size = 0
    for _ in range(repeats):
        started = time.perf_counter()
        response = client.get(url)
        timings.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
        size = len(response.content)
    return statistics.median(timings), max(timings), size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--hours", type=float, default=8.0)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        controller = Controller(ControllerConfig(), data_dir=Path(folder))
        controller.start()
        started = time.perf_counter()
        rows = fill(controller, devices=args.devices, hours=args.hours)
        fill_s = time.perf_counter() - started
        token = ApiTokenStore(controller.registry.database).create("bench", role=ApiTokenRole.READ)
        server = HttpServer(create_app(controller), port=0)
        port = server.start()
        # The same app without the token check, to show what the check costs per request.
        open_server = HttpServer(create_app(controller, auth=HttpAuth.NONE), port=0)
        open_port = open_server.start()
        day_ago = f"{datetime.now(UTC) - timedelta(hours=args.hours):%Y-%m-%dT%H:%M:%SZ}"
        requests = [
            ("GET /metrics", "/metrics"),
            ("GET /api/v1/devices", "/api/v1/devices"),
            (
                f"telemetry of one device, {args.hours:g} h raw (limit 10000)",
                f"/api/v1/devices/bench-0000/telemetry?since={day_ago}&limit=10000",
            ),
            (
                f"telemetry of one device, {args.hours:g} h, step=60",
                f"/api/v1/devices/bench-0000/telemetry?since={day_ago}&step=60&limit=10000",
            ),
            (
                f"telemetry of one device, {args.hours:g} h, step=600",
                f"/api/v1/devices/bench-0000/telemetry?since={day_ago}&step=600",
            ),
        ]
        results = []
        headers = {"Authorization": f"Bearer {token.token}"}
        try:
            with httpx.Client(
                base_url=f"http://127.0.0.1:{port}", timeout=120, headers=headers
            ) as client:
                for label, url in requests:
                    client.get(url).raise_for_status()  # warm the SQLite page cache
                    median, worst, size = time_get(client, url, repeats=args.repeats)
                    results.append((label, median, worst, size))
            with httpx.Client(base_url=f"http://127.0.0.1:{open_port}", timeout=120) as client:
                url = "/api/v1/devices"
                client.get(url).raise_for_status()
                median, worst, size = time_get(client, url, repeats=args.repeats)
                results.append(("GET /api/v1/devices without the token check", median, worst, size))
        finally:
            open_server.stop()
            server.stop()
            controller.shutdown(grace_s=0)

    load = os.getloadavg()
    lines = [
        "## HTTP API read paths",
        "",
        f"Command: `python benchmarks/api_bench.py --devices {args.devices} --hours "
        f"{args.hours:g} --repeats {args.repeats}`. Machine: {machine_description()}.",
        f"Measured on {datetime.now(UTC):%Y-%m-%d}, load average {load[0]:.1f} / "
        f"{load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min) while other jobs shared the cores.",
        f"SQLite holds {rows:,} telemetry rows ({args.devices} devices, one sample every "
        f"{INTERVAL_S} s for {args.hours:g} h, stored in {fill_s:.0f} s). Each request ran "
        f"{args.repeats} times over loopback HTTP after one warm-up, with a read token "
        '(`http_auth = "token"`) except on the last row, which served the same request '
        'with `http_auth = "none"`.',
        "",
        "| request | median ms | max ms | response bytes |",
        "|---|---|---|---|",
    ]
    for label, median, worst, size in results:
        lines.append(f"| {label} | {median:.1f} | {worst:.1f} | {size:,} |")
    samples = int(args.hours * 3600 / INTERVAL_S)
    lines += [
        "",
        f"The raw history returns all {samples:,} samples of the device as JSON; with "
        f"`step=600` SQLite groups them into about {int(args.hours * 3600 / 600)} buckets and only "
        "those leave the database. `/metrics` and the device list read every device's "
        "newest sample with one grouped query over the telemetry table.",
    ]
    with_check = next(median for label, median, _, _ in results if label == "GET /api/v1/devices")
    without_check = results[-1][1]
    lines += [
        "",
        f"The token check, a primary-key read of `api_tokens` on a worker thread, changed the "
        f"median of the device list by {with_check - without_check:+.1f} ms "
        f"({with_check:.1f} ms with it, {without_check:.1f} ms without).",
    ]
    section = "\n".join(lines) + "\n"
    print(section)  # noqa: T201 - the report is the script's output
    if args.out is not None:
        replace_section(args.out, section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
