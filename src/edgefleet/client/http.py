"""``ControllerClient``: the controller's HTTP API (``/api/v1``) as Python calls.

Errors::

    ClientError                  base of the client's errors (an ``EdgefleetError``)
    ├── ControllerUnreachableError  no HTTP response from the URL: refused, timed out, bad name
    └── ApiResponseError         the API returned an error; carries status, code, field

``ApiResponseError.message`` is the API's own message, which names the rejected value and
the fix. ``hint`` adds the command that lists valid ids for a ``*_not_found`` code, and
how to pass or create a token for a 401 or 403.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from edgefleet.client import DEFAULT_CONTROLLER_URL
from edgefleet.errors import EdgefleetError, InvalidInputError

__all__ = [
    "DEFAULT_CONTROLLER_URL",
    "ApiResponseError",
    "ClientError",
    "ControllerClient",
    "ControllerUnreachableError",
    "validate_controller_url",
    "validate_token",
]

# An upload also waits for the controller to store and check both files.
UPLOAD_TIMEOUT_S = 300.0

# The command that lists valid ids, per not-found error code of the API.
_LISTING_HINTS = {
    "device_not_found": "`edgefleet devices` lists the registered devices",
    "model_not_found": "`edgefleet models` lists the registered models",
    "variant_not_found": "`edgefleet device DEVICE` shows the ladder of a device, "
    "`edgefleet variants MODEL` every variant",
    "rollout_not_found": "`edgefleet rollouts list` lists the rollouts",
    "deployment_not_found": "`edgefleet device DEVICE` lists a device's deployments",
}


# Next steps after the controller rejected the token, per status code.
_AUTH_HINTS = {
    401: "pass a token with --token or the EDGEFLEET_API_TOKEN environment variable; "
    "`edgefleet controller api-token create NAME` on the controller host creates one",
    403: "this command needs an operator token; `edgefleet controller api-token create NAME "
    "--role operator` on the controller host creates one",
}


class ClientError(EdgefleetError):
    """A request to the controller's HTTP API failed."""


class ControllerUnreachableError(ClientError):
    """No HTTP response came from the controller's URL."""

    def __init__(self, url: str, cause: str) -> None:
        port = httpx.URL(url).port or (443 if url.startswith("https:") else 80)
        super().__init__(
            f"cannot reach the controller at {url} ({cause}). Start it with "
            f"`edgefleet controller serve --http-port {port} ...`, or point at a running one "
            "with --controller-url URL or the EDGEFLEET_CONTROLLER_URL environment variable"
        )
        self.url = url
        self.cause = cause


class ApiResponseError(ClientError):
    """The API returned an error status with its JSON error body."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        hint = _AUTH_HINTS.get(status) if code in ("unauthorized", "forbidden") else None
        hint = hint or _LISTING_HINTS.get(code)
        super().__init__(f"{message} ({hint})" if hint else message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.hint = hint


def validate_controller_url(url: str) -> str:
    """Return ``url`` without a trailing slash; raises ``InvalidInputError`` unless http(s)."""
    parsed = httpx.URL(url) if "://" in url else None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise InvalidInputError(
            f"invalid controller URL {url!r}: use http://HOST:PORT, for example "
            f"{DEFAULT_CONTROLLER_URL}"
        )
    return url.rstrip("/")


def validate_token(token: str) -> str:
    """Return ``token`` without surrounding whitespace; raises ``InvalidInputError`` if it
    cannot go into an HTTP header.
    """
    stripped = token.strip()
    if not stripped.isascii() or not stripped.isprintable() or " " in stripped:
        raise InvalidInputError(
            "invalid API token: it contains spaces or characters other than printable ASCII; "
            "pass the single line that `edgefleet controller api-token create` printed"
        )
    return stripped


class ControllerClient:
    """Calls of the controller's HTTP API; every method returns the decoded JSON body.

    Use it as a context manager, or call ``close``, to release the connection pool.
    """

    def __init__(self, base_url: str, *, token: str | None = None, timeout_s: float = 10.0) -> None:
        self.base_url = validate_controller_url(base_url)
        headers = {"Authorization": f"Bearer {validate_token(token)}"} if token else None
        self._http = httpx.Client(
            base_url=f"{self.base_url}/api/v1", timeout=timeout_s, headers=headers
        )

    def __enter__(self) -> ControllerClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        files: dict[str, Any] | None = None,
        form: dict[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        """Send one request and return the JSON body; raises a ``ClientError`` subclass."""
        query = {key: value for key, value in (params or {}).items() if value is not None}
        extra: dict[str, Any] = {} if timeout_s is None else {"timeout": timeout_s}
        if files is not None:
            extra["files"] = files
        if form:
            extra["data"] = form
        try:
            response = self._http.request(method, path, params=query, json=json, **extra)
        except httpx.TransportError as exc:
            raise ControllerUnreachableError(self.base_url, _describe(exc)) from exc
        if response.is_success:
            return response.json()
        raise _error_from(response)

    # -- devices ----------------------------------------------------------------------

    def devices(self) -> list[dict[str, Any]]:
        return self.request("GET", "/devices")["devices"]

    def device(self, device_id: str) -> dict[str, Any]:
        return self.request("GET", f"/devices/{_segment(device_id)}")

    def telemetry(
        self,
        device_id: str,
        *,
        since: str | None = None,
        until: str | None = None,
        step_s: int | None = None,
        limit: int | None = None,
    ) -> dict[str, Any]:
        params = {"since": since, "until": until, "step": step_s, "limit": limit}
        return self.request("GET", f"/devices/{_segment(device_id)}/telemetry", params=params)

    def ladder(self, device_id: str) -> dict[str, Any]:
        return self.request("GET", f"/devices/{_segment(device_id)}/ladder")

    def device_deployments(self, device_id: str) -> list[dict[str, Any]]:
        return self.request("GET", f"/devices/{_segment(device_id)}/deployments")["deployments"]

    def deploy(self, device_id: str, variant_id: str, *, reason: str | None = None) -> dict:
        body: dict[str, Any] = {"variant_id": variant_id}
        if reason:
            body["reason"] = reason
        return self.request("POST", f"/devices/{_segment(device_id)}/deployments", json=body)

    def deployment(self, deployment_id: str) -> dict[str, Any]:
        return self.request("GET", f"/deployments/{_segment(deployment_id)}")

    def pin(self, device_id: str, *, variant_id: str | None = None, reason: str | None = None):
        body: dict[str, Any] = {}
        if variant_id:
            body["variant_id"] = variant_id
        if reason:
            body["reason"] = reason
        return self.request("PUT", f"/devices/{_segment(device_id)}/pin", json=body)

    def unpin(self, device_id: str) -> dict[str, Any]:
        return self.request("DELETE", f"/devices/{_segment(device_id)}/pin")

    # -- models -----------------------------------------------------------------------

    def models(self) -> dict[str, Any]:
        return self.request("GET", "/models")

    def register_model(
        self, model_path: Path, data_path: Path, *, name: str | None = None
    ) -> dict[str, Any]:
        """Upload an ONNX model and its .npz evaluation data; returns the registered model."""
        with model_path.open("rb") as model, data_path.open("rb") as data:
            files = {"model": (model_path.name, model), "data": (data_path.name, data)}
            form = {"name": name} if name else None
            return self.request(
                "POST", "/models", files=files, form=form, timeout_s=UPLOAD_TIMEOUT_S
            )

    def variants(self, model_id: str, *, profile: str | None = None) -> dict[str, Any]:
        return self.request(
            "GET", f"/models/{_segment(model_id)}/variants", params={"profile": profile}
        )

    # -- rollouts ---------------------------------------------------------------------

    def rollouts(self, *, states: Iterable[str] | None = None) -> list[dict[str, Any]]:
        params = {"state": list(states)} if states else None
        return self.request("GET", "/rollouts", params=params)["rollouts"]

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        return self.request("GET", f"/rollouts/{_segment(rollout_id)}")

    def start_rollout(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", "/rollouts", json=body)

    def rollout_action(self, rollout_id: str, action: str, *, reason: str | None = None):
        body = {"reason": reason} if reason and action != "resume" else None
        return self.request("POST", f"/rollouts/{_segment(rollout_id)}/{action}", json=body)

    # -- events -----------------------------------------------------------------------

    def events(
        self,
        *,
        device_id: str | None = None,
        kinds: Iterable[str] | None = None,
        since: str | None = None,
        after_id: int | None = None,
        limit: int | None = None,
        wait_s: float | None = None,
    ) -> dict[str, Any]:
        params = {
            "device_id": device_id,
            "kind": list(kinds) if kinds else None,
            "since": since,
            "after_id": after_id,
            "limit": limit,
            "wait": wait_s,
        }
        # A long poll keeps the request open for wait_s, so the read timeout must exceed it.
        timeout = None if wait_s is None else wait_s + 10.0
        return self.request("GET", "/events", params=params, timeout_s=timeout)


def _segment(value: str) -> str:
    # An id with "/" or "?" must stay one path segment, so that it reaches the API's
    # validation (and its error message) instead of another route.
    return quote(value, safe="")


def _describe(error: httpx.TransportError) -> str:
    if isinstance(error, httpx.ConnectError):
        return f"connection failed: {error}"
    if isinstance(error, httpx.TimeoutException):
        return "timed out"
    return str(error) or type(error).__name__


def _error_from(response: httpx.Response) -> ApiResponseError:
    try:
        detail = response.json().get("error") or {}
    except ValueError:
        detail = {}
    if not isinstance(detail, dict):
        detail = {}
    message = detail.get("message") or (
        f"{response.request.method} {response.request.url} failed with HTTP "
        f"{response.status_code}; is {response.request.url.host} an edgefleet controller?"
    )
    return ApiResponseError(
        response.status_code,
        detail.get("code") or "http_error",
        message,
        detail.get("field"),
    )
