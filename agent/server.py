"""Local inference API for applications on the device (stdlib HTTP, JSON bodies).

Endpoints:

- ``POST /v1/infer`` with ``{"inputs": {"<name>": nested list}}``, or ``{"input": nested
  list}`` for a single-input model; returns ``{"outputs": {...}, "variant_id": ...,
  "latency_ms": ...}``.
- ``GET /v1/health``: 200 with the variant when a model serves, 503 before the first one.
- ``GET /v1/model``: a summary of the serving variant's manifest.

The server binds to 127.0.0.1 by default because it has no authentication.
"""

from __future__ import annotations

import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from edgefleet.agent.errors import InferenceInputError, NoModelError
from edgefleet.agent.runtime import ModelRuntime
from edgefleet.protos.v1 import fleet_pb2

__all__ = ["MAX_BODY_BYTES", "InferenceServer"]

logger = logging.getLogger(__name__)

# Large enough for a few camera frames as JSON numbers. Parsing a body of this size into
# Python lists and a float64 array took about 37 MB (8 MiB of 6-digit floats, CPython 3.11
# on x86-64), which a 512 MB device can spare.
MAX_BODY_BYTES = 8 * 1024 * 1024
# Oversized bodies up to this size are read and dropped before the 413 response.
_MAX_DISCARD_BYTES = 4 * MAX_BODY_BYTES


class InferenceServer:
    """The HTTP API over a ``ModelRuntime``, served from a background thread."""

    def __init__(self, runtime: ModelRuntime, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.runtime = runtime
        self._httpd = ThreadingHTTPServer((host, port), _make_handler(runtime))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return str(self._httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> None:
        # The poll interval bounds how long stop() waits for the serving loop to notice.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="inference-api",
            daemon=True,
        )
        self._thread.start()
        logger.info("inference API listening on http://%s:%d", self.host, self.port)

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()


class _ApiError(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


def _make_handler(runtime: ModelRuntime) -> type[BaseHTTPRequestHandler]:
    class Handler(_InferenceHandler):
        pass

    Handler.runtime = runtime
    return Handler


class _InferenceHandler(BaseHTTPRequestHandler):
    runtime: ModelRuntime
    protocol_version = "HTTP/1.1"
    server_version = "edgefleet-agent"
    # Socket timeout in seconds, so a client that stops sending cannot hold a thread forever.
    timeout = 30

    def do_GET(self) -> None:
        routes = {"/v1/health": self._health, "/v1/model": self._model}
        self._dispatch(routes, allowed="POST" if self.path == "/v1/infer" else None)

    def do_POST(self) -> None:
        routes = {"/v1/infer": self._infer}
        self._dispatch(routes, allowed="GET" if self.path in ("/v1/health", "/v1/model") else None)

    def do_PUT(self) -> None:
        self._reject_method()

    def do_DELETE(self) -> None:
        self._reject_method()

    def do_PATCH(self) -> None:
        self._reject_method()

    def _reject_method(self) -> None:
        # The body, if any, is never read, so the connection cannot be reused.
        self.close_connection = True
        path = self.path.split("?", 1)[0]
        allowed = {"/v1/infer": "POST", "/v1/health": "GET", "/v1/model": "GET"}.get(path)
        if allowed is None:
            self._send_json(HTTPStatus.NOT_FOUND, {"error": f"no endpoint {path}"})
            return
        message = f"use {allowed} for {path}"
        self._send_json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": message})

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)

    def _dispatch(self, routes: dict[str, Any], *, allowed: str | None) -> None:
        path = self.path.split("?", 1)[0]
        route = routes.get(path)
        if allowed is None and route is None:
            allowed = {"/v1/infer": "POST", "/v1/health": "GET", "/v1/model": "GET"}.get(path)
        try:
            if route is None and allowed:
                raise _ApiError(HTTPStatus.METHOD_NOT_ALLOWED, f"use {allowed} for {path}")
            if route is None:
                raise _ApiError(HTTPStatus.NOT_FOUND, f"no endpoint {self.path}")
            status, body = route()
        except _ApiError as exc:
            status, body = exc.status, {"error": str(exc)}
        except NoModelError as exc:
            status, body = HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)}
        except InferenceInputError as exc:
            status, body = HTTPStatus.BAD_REQUEST, {"error": str(exc)}
        self._send_json(status, body)

    # -- endpoints ----------------------------------------------------------------------

    def _health(self) -> tuple[HTTPStatus, dict[str, Any]]:
        current = self.runtime.current
        if current is None:
            return HTTPStatus.SERVICE_UNAVAILABLE, {"status": "no model", "variant_id": None}
        return HTTPStatus.OK, {"status": "serving", "variant_id": current.variant_id}

    def _model(self) -> tuple[HTTPStatus, dict[str, Any]]:
        current = self.runtime.current
        if current is None:
            raise NoModelError("no model is active yet; wait for a deployment")
        return HTTPStatus.OK, summarize_manifest(current.manifest)

    def _infer(self) -> tuple[HTTPStatus, dict[str, Any]]:
        payload = self._read_json()
        inputs = _parse_inputs(payload, self.runtime)
        result = self.runtime.infer(inputs)
        return HTTPStatus.OK, {
            "outputs": {name: value.tolist() for name, value in result.outputs.items()},
            "variant_id": result.variant_id,
            "latency_ms": result.latency_ms,
        }

    # -- HTTP plumbing ------------------------------------------------------------------

    def _read_json(self) -> Any:
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            # Chunked bodies are not supported, because without a length the body cannot be
            # capped. The unread body would be parsed as the next request, so close instead.
            self.close_connection = True
            raise _ApiError(HTTPStatus.LENGTH_REQUIRED, "missing Content-Length header")
        try:
            length = int(length_header)
        except ValueError:
            raise _ApiError(HTTPStatus.BAD_REQUEST, "invalid Content-Length header") from None
        if length < 0:
            raise _ApiError(HTTPStatus.BAD_REQUEST, "invalid Content-Length header")
        if length > MAX_BODY_BYTES:
            self._discard_body(length)
            raise _ApiError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"request body of {length} bytes exceeds the limit of {MAX_BODY_BYTES} bytes",
            )
        body = self.rfile.read(length)
        try:
            return json.loads(body)
        except (UnicodeDecodeError, ValueError) as exc:
            message = f"request body is not valid JSON: {exc}"
            raise _ApiError(HTTPStatus.BAD_REQUEST, message) from exc
        except RecursionError:
            message = "request body nests JSON arrays or objects too deeply"
            raise _ApiError(HTTPStatus.BAD_REQUEST, message) from None

    def _discard_body(self, length: int) -> None:
        # Reading a moderately oversized body lets the client finish sending and then read
        # the 413. Closing with unread data would reset the connection under it instead.
        self.close_connection = True
        if length > _MAX_DISCARD_BYTES:
            return
        remaining = length
        while remaining > 0:
            block = self.rfile.read(min(remaining, 1 << 16))
            if not block:
                return
            remaining -= len(block)

    def _send_json(self, status: HTTPStatus, body: dict[str, Any]) -> None:
        try:
            data = json.dumps(body, allow_nan=False).encode()
        except ValueError:
            # A model can still produce NaN from finite inputs; bare NaN is not JSON.
            status = HTTPStatus.INTERNAL_SERVER_ERROR
            data = json.dumps({"error": "the model produced NaN or infinity"}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)


def _parse_inputs(payload: Any, runtime: ModelRuntime) -> dict[str, np.ndarray]:
    if not isinstance(payload, dict):
        raise _ApiError(HTTPStatus.BAD_REQUEST, 'request body must be a JSON object with "inputs"')
    if "inputs" in payload:
        named = payload["inputs"]
        if not isinstance(named, dict):
            raise _ApiError(HTTPStatus.BAD_REQUEST, '"inputs" must map input names to arrays')
    elif "input" in payload:
        current = runtime.current
        if current is None:
            raise NoModelError("no model is active yet; wait for a deployment")
        if len(current.inputs) != 1:
            names = [spec.name for spec in current.inputs]
            raise _ApiError(
                HTTPStatus.BAD_REQUEST, f'the model takes several inputs {names}; use "inputs"'
            )
        named = {current.inputs[0].name: payload["input"]}
    else:
        raise _ApiError(HTTPStatus.BAD_REQUEST, 'request body needs "inputs" or "input"')

    arrays = {}
    for name, value in named.items():
        try:
            arrays[name] = np.asarray(value)
        except ValueError as exc:
            raise InferenceInputError(f"input {name!r} is not a rectangular array: {exc}") from exc
        if arrays[name].dtype.kind not in "biuf":
            raise InferenceInputError(f"input {name!r} must contain only numbers")
        if arrays[name].dtype.kind == "f" and not np.isfinite(arrays[name]).all():
            raise InferenceInputError(f"input {name!r} contains NaN or infinity")
    return arrays


def summarize_manifest(manifest: fleet_pb2.VariantManifest) -> dict[str, Any]:
    """Return the manifest fields an application needs, without the self-test tensors."""

    def specs(items: Any) -> list[dict[str, Any]]:
        return [
            {
                "name": spec.name,
                "type": fleet_pb2.TensorType.Name(spec.type),
                "shape": list(spec.shape),
            }
            for spec in items
        ]

    return {
        "variant_id": manifest.variant_id,
        "model_id": manifest.model_id,
        "sha256": manifest.sha256,
        "size_bytes": manifest.size_bytes,
        "opset": manifest.opset,
        "recipe_json": manifest.recipe_json,
        "inputs": specs(manifest.inputs),
        "outputs": specs(manifest.outputs),
        "metrics": {
            "accuracy": manifest.metrics.accuracy,
            "latency_p95_ms": manifest.metrics.latency_p95_ms,
            "peak_memory_mb": manifest.metrics.peak_memory_mb,
        },
    }
