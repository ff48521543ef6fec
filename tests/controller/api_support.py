"""Helpers for the HTTP API tests: a controller with a fake ladder served over real HTTP."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import numpy as np
from controller_support import make_record, store_fake_ladder
from fastapi import FastAPI

from edgefleet.controller.api import HttpServer, create_app
from edgefleet.controller.api_tokens import ApiTokenStore
from edgefleet.controller.models import ApiTokenRole, ModelRow
from edgefleet.controller.service import Controller
from edgefleet.profiles import DeviceProfile

# A fixed start, so the buckets of the downsampling tests are predictable.
BASE_TIME = datetime(2026, 1, 5, 12, 0, 0, tzinfo=UTC)


@dataclass
class ApiFleet:
    """A running controller, its HTTP server and a client bound to it.

    ``client`` sends an operator token; ``read_token`` is a token with the read role.
    """

    controller: Controller
    app: FastAPI
    server: HttpServer
    client: httpx.Client
    model: ModelRow
    ladder: list[str]
    operator_token: str
    read_token: str

    @property
    def url(self) -> str:
        return str(self.client.base_url).rstrip("/")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@contextmanager
def serve_api(
    controller: Controller,
    profile: DeviceProfile,
    *,
    max_upload_bytes: int = 1024 * 1024,
) -> Iterator[ApiFleet]:
    """Store a fake ladder for ``profile``, serve the API on a free port, yield a client."""
    model, ladder = store_fake_ladder(controller, profile)
    tokens = ApiTokenStore(controller.registry.database)
    operator = tokens.create("test-operator", role=ApiTokenRole.OPERATOR).token
    read = tokens.create("test-reader", role=ApiTokenRole.READ).token
    app = create_app(controller, max_upload_bytes=max_upload_bytes)
    server = HttpServer(app, port=0)
    port = server.start()
    try:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", timeout=30, headers=bearer(operator)
        ) as client:
            yield ApiFleet(controller, app, server, client, model, ladder, operator, read)
    finally:
        server.stop()


def store_series(
    controller: Controller,
    device_id: str,
    p95_values_ms: list[float],
    *,
    interval_s: float = 10.0,
    start: datetime = BASE_TIME,
) -> None:
    """Store one sample per value, ``interval_s`` apart from ``start``, in one transaction.

    ``Controller.ingest_telemetry`` stamps samples with the current time; the
    downsampling tests need a known time axis, so they store through the registry.
    """
    records = [
        make_record(
            at=(start + timedelta(seconds=index * interval_s)).timestamp(),
            p95_ms=value,
            device_id=device_id,
        )
        for index, value in enumerate(p95_values_ms)
    ]
    controller.registry.add_telemetry_many(records)


def npz_bytes(sample_shape: tuple[int, ...] = (3, 64, 64)) -> bytes:
    """An evaluation data set in the layout ``load_dataset`` expects, as .npz bytes."""
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        x_train=rng.random((8, *sample_shape), dtype=np.float32),
        y_train=np.arange(8) % 2,
        x_val=rng.random((4, *sample_shape), dtype=np.float32),
        y_val=np.arange(4) % 2,
    )
    return buffer.getvalue()


def at(offset_s: float) -> datetime:
    return BASE_TIME + timedelta(seconds=offset_s)


__all__ = ["BASE_TIME", "ApiFleet", "at", "bearer", "npz_bytes", "serve_api", "store_series"]
