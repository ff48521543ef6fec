"""Bearer-token authentication of the HTTP API, over real HTTP against a real controller."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from api_support import ApiFleet, bearer, serve_api

from edgefleet.controller.api import HttpServer, auth, create_app
from edgefleet.controller.api.auth import HttpAuth, check_http_auth
from edgefleet.controller.api_tokens import LAST_USED_RESOLUTION, ApiTokenStore
from edgefleet.controller.config import ControllerConfig
from edgefleet.controller.errors import (
    ApiTokenRejectedError,
    ApiTokenRevokedError,
    ConfigError,
    UnknownApiTokenError,
)
from edgefleet.controller.models import ApiTokenRole, ApiTokenRow, utc_now
from edgefleet.controller.service import Controller
from edgefleet.profiles import DeviceProfile

CREATE_COMMAND = "edgefleet controller api-token create"


@pytest.fixture
def api(controller: Controller, profile: DeviceProfile) -> Iterator[ApiFleet]:
    with serve_api(controller, profile) as fleet:
        controller.register_device("dev-1", profile)
        assert controller.wait_until_idle(30)
        yield fleet


def assert_unauthorized(response: httpx.Response) -> dict:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    error = response.json()["error"]
    assert error["code"] == "unauthorized"
    assert CREATE_COMMAND in error["message"]
    return error


def test_request_without_header_rejected(api: ApiFleet) -> None:
    response = httpx.get(f"{api.url}/api/v1/devices", timeout=10)

    error = assert_unauthorized(response)
    assert "missing Authorization header" in error["message"]


@pytest.mark.parametrize(
    "header",
    ["Basic dXNlcjpwYXNz", "Bearer", "Bearer not-a-token", "Token efa1.x.y"],
)
def test_malformed_header_rejected(api: ApiFleet, header: str) -> None:
    response = httpx.get(f"{api.url}/api/v1/devices", headers={"Authorization": header}, timeout=10)

    error = assert_unauthorized(response)
    assert "malformed" in error["message"]


def test_unknown_token_rejected(api: ApiFleet) -> None:
    unknown = "efa1.0123456789abcdef." + "A" * 43

    response = httpx.get(f"{api.url}/api/v1/devices", headers=bearer(unknown), timeout=10)

    error = assert_unauthorized(response)
    assert "unknown API token" in error["message"]


def test_wrong_secret_rejected(api: ApiFleet) -> None:
    token_id = api.operator_token.split(".")[1]
    wrong = f"efa1.{token_id}." + "B" * 43

    response = httpx.get(f"{api.url}/api/v1/devices", headers=bearer(wrong), timeout=10)

    error = assert_unauthorized(response)
    assert "unknown API token" in error["message"], "same message as an unknown id"


def test_revoked_token_rejected_on_next_request(api: ApiFleet) -> None:
    assert api.client.get("/api/v1/devices").status_code == 200
    token_id = api.operator_token.split(".")[1]

    ApiTokenStore(api.controller.registry.database).revoke(token_id)
    response = api.client.get("/api/v1/devices")

    error = assert_unauthorized(response)
    assert "revoked" in error["message"]


def test_read_token_may_get(api: ApiFleet) -> None:
    headers = bearer(api.read_token)

    devices = httpx.get(f"{api.url}/api/v1/devices", headers=headers, timeout=10)
    metrics = httpx.get(f"{api.url}/metrics", headers=headers, timeout=10)

    assert devices.status_code == 200
    assert metrics.status_code == 200
    assert "edgefleet_devices" in metrics.text


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/api/v1/devices/dev-1/pin"),
        ("DELETE", "/api/v1/devices/dev-1/pin"),
        ("POST", "/api/v1/rollouts"),
        ("POST", "/api/v1/models"),
    ],
)
def test_read_token_forbidden_on_write(api: ApiFleet, method: str, path: str) -> None:
    response = httpx.request(
        method, f"{api.url}{path}", headers=bearer(api.read_token), json={}, timeout=10
    )

    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert error["code"] == "forbidden"
    assert "read role" in error["message"]
    assert "--role operator" in error["message"]


def test_operator_token_may_write(api: ApiFleet) -> None:
    pinned = api.client.put("/api/v1/devices/dev-1/pin", json={"variant_id": api.ladder[1]})

    assert pinned.status_code == 200, pinned.text
    assert pinned.json()["pinned"] is True


def test_upload_without_token_rejected_before_size_check(api: ApiFleet) -> None:
    # serve_api caps uploads at 1 MiB; a token check after reading the body would return 413.
    files = {"model": ("big.onnx", b"\0" * (2 * 1024 * 1024)), "data": ("d.npz", b"\0")}

    response = httpx.post(f"{api.url}/api/v1/models", files=files, timeout=30)

    assert_unauthorized(response)


def test_metrics_without_token_rejected(api: ApiFleet) -> None:
    response = httpx.get(f"{api.url}/metrics", timeout=10)

    assert_unauthorized(response)


@pytest.mark.parametrize(
    "path",
    ["/metrics/", "/api/v1/devices/", "//api/v1/devices", "/API/v1/devices",
     "/api/v1/health/x"],
)  # fmt: skip
def test_path_variants_never_bypass_token(api: ApiFleet, path: str) -> None:
    # Set the raw path, so that the request line carries it exactly as written.
    request = httpx.Request("GET", f"{api.url}/")
    request.url = request.url.copy_with(raw_path=path.encode())

    with httpx.Client(timeout=10, follow_redirects=True) as client:
        response = client.send(request)

    assert response.status_code in (401, 404), (path, response.status_code, response.text)


def test_health_and_openapi_need_no_token(api: ApiFleet) -> None:
    health = httpx.get(f"{api.url}/api/v1/health", timeout=10)
    document = httpx.get(f"{api.url}/api/v1/openapi.json", timeout=10)

    assert health.status_code == 200
    assert document.status_code == 200


def test_openapi_declares_bearer_scheme(api: ApiFleet) -> None:
    document = httpx.get(f"{api.url}/api/v1/openapi.json", timeout=10).json()

    scheme = document["components"]["securitySchemes"]["apiToken"]
    assert scheme["type"] == "http"
    assert scheme["scheme"] == "bearer"
    paths = document["paths"]
    assert paths["/api/v1/devices"]["get"]["security"] == [{"apiToken": []}]
    assert paths["/api/v1/rollouts"]["post"]["security"] == [{"apiToken": []}]
    assert paths["/metrics"]["get"]["security"] == [{"apiToken": []}]
    assert "security" not in paths["/api/v1/health"]["get"]
    assert "401" not in paths["/api/v1/health"]["get"]["responses"]
    assert "401" in paths["/api/v1/devices"]["get"]["responses"]


def test_rejection_logged_without_secret(api: ApiFleet, caplog: pytest.LogCaptureFixture) -> None:
    token_id, secret = api.operator_token.split(".")[1:]
    wrong_secret = "C" * 43
    caplog.set_level(logging.WARNING, logger="edgefleet.controller.api.auth")

    response = httpx.get(
        f"{api.url}/api/v1/devices", headers=bearer(f"efa1.{token_id}.{wrong_secret}"), timeout=10
    )

    assert response.status_code == 401
    rejections = [r for r in caplog.records if r.name == "edgefleet.controller.api.auth"]
    assert len(rejections) == 1, "one log line per rejected request"
    message = rejections[0].getMessage()
    assert "GET /api/v1/devices" in message
    assert "from 127.0.0.1:" in message
    assert f"token {token_id}" in message
    assert wrong_secret not in message
    assert secret not in caplog.text


def test_repeated_rejections_logged_once_per_window(
    api: ApiFleet, caplog: pytest.LogCaptureFixture
) -> None:
    assert api.app.state.rejection_log.window_s == auth.REJECTION_LOG_WINDOW_S
    api.app.state.rejection_log.window_s = 1.0
    caplog.set_level(logging.WARNING, logger="edgefleet.controller.api.auth")
    unknown = "efa1.0123456789abcdef." + "C" * 43

    with httpx.Client(base_url=api.url, timeout=10) as client:
        statuses = [
            client.get("/api/v1/devices", headers=bearer(unknown)).status_code for _ in range(30)
        ]
        first_window = [r.getMessage() for r in caplog.records if r.name.endswith("api.auth")]
        time.sleep(1.2)
        statuses.append(client.get("/api/v1/devices", headers=bearer(unknown)).status_code)

    assert statuses == [401] * 31, "every request is still rejected"
    assert len(first_window) == 1
    assert "not logged" not in first_window[0]
    messages = [r.getMessage() for r in caplog.records if r.name.endswith("api.auth")]
    assert len(messages) == 2
    assert messages[1].endswith("(29 more like it since the last one, not logged)")


def test_read_rejection_logged_with_token_id(
    api: ApiFleet, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="edgefleet.controller.api.auth")
    read_id = api.read_token.split(".")[1]

    response = httpx.delete(
        f"{api.url}/api/v1/devices/dev-1/pin", headers=bearer(api.read_token), timeout=10
    )

    assert response.status_code == 403
    messages = [r.getMessage() for r in caplog.records if r.name.endswith("api.auth")]
    assert len(messages) == 1
    assert f"token {read_id}" in messages[0]
    assert "HTTP 403" in messages[0]
    assert api.read_token not in caplog.text


def test_auth_none_serves_without_token(
    controller: Controller, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="edgefleet.controller.api.app")
    server = HttpServer(create_app(controller, auth=HttpAuth.NONE), port=0)
    port = server.start()
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/api/v1/devices", timeout=10)
    finally:
        server.stop()

    assert response.status_code == 200
    assert "without a token (http_auth = none)" in caplog.text


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "::", "controller.example.net"])
def test_auth_none_rejected_off_loopback(host: str) -> None:
    with pytest.raises(ConfigError, match=r'http_auth = "none".*--http-host 127\.0\.0\.1'):
        check_http_auth("none", host)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "[::1]", "localhost", "127.0.0.2"])
def test_auth_none_allowed_on_loopback(host: str) -> None:
    assert check_http_auth("none", host) is HttpAuth.NONE


def test_config_rejects_unknown_auth_mode() -> None:
    with pytest.raises(ConfigError, match=r"controller\.http_auth .*'basic'"):
        ControllerConfig(http_auth="basic")


def test_serve_rejects_auth_none_off_loopback(tmp_path: Path) -> None:
    config = tmp_path / "controller.toml"
    config.write_text('[controller]\nhttp_auth = "none"\n')

    result = subprocess.run(
        [sys.executable, "-m", "edgefleet", "controller", "serve", "--data-dir",
         str(tmp_path / "data"), "--config", str(config), "--grpc-port", "0",
         "--http-port", "0", "--http-host", "0.0.0.0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip

    assert result.returncode == 2
    assert 'http_auth = "none" is only allowed on a loopback address' in result.stderr
    assert "0.0.0.0" in result.stderr


# -- the token store ------------------------------------------------------------------


def test_token_stored_only_hashed(controller: Controller) -> None:
    database = controller.registry.database
    new = ApiTokenStore(database).create("alice", role=ApiTokenRole.OPERATOR)
    secret = new.token.split(".")[2]

    with database.session() as session:
        row = session.get(ApiTokenRow, new.token_id)

    assert row is not None
    assert row.secret_sha256 != secret
    assert len(row.secret_sha256) == 64
    assert secret not in repr(row.__dict__)


def test_last_used_written_once_a_minute(controller: Controller) -> None:
    store = ApiTokenStore(controller.registry.database)
    new = store.create("poller", role=ApiTokenRole.READ)
    start = utc_now()

    def last_used():
        return next(row for row in store.list() if row.id == new.token_id).last_used_at

    assert last_used() is None
    store.authenticate(new.token, now=start)
    assert last_used() == start
    store.authenticate(new.token, now=start + timedelta(seconds=30))
    assert last_used() == start, "not written again within a minute"
    later = start + LAST_USED_RESOLUTION + timedelta(seconds=1)
    store.authenticate(new.token, now=later)
    assert last_used() == later


def test_revoke_unknown_and_twice(controller: Controller) -> None:
    store = ApiTokenStore(controller.registry.database)
    new = store.create("ci", role=ApiTokenRole.OPERATOR)

    with pytest.raises(UnknownApiTokenError, match="0123456789abcdef"):
        store.revoke("0123456789abcdef")
    store.revoke(new.token_id)
    with pytest.raises(ApiTokenRevokedError, match="already revoked"):
        store.revoke(new.token_id)
    with pytest.raises(ApiTokenRejectedError, match="revoked"):
        store.authenticate(new.token)


def test_cli_roles_match_stored_roles() -> None:
    from edgefleet.controller.cli import ApiRole

    assert {role.value for role in ApiRole} == {role.value for role in ApiTokenRole}


@pytest.mark.parametrize("name", ["", "has space", "-dash", "x" * 65, "semi;colon"])
def test_create_rejects_bad_name(controller: Controller, name: str) -> None:
    store = ApiTokenStore(controller.registry.database)

    with pytest.raises(ValueError, match="invalid API token name"):
        store.create(name, role=ApiTokenRole.READ)
