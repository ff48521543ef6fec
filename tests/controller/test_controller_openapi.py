"""The OpenAPI document: valid OpenAPI 3.1, listing every route the app serves."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from api_support import ApiFleet, serve_api
from openapi_spec_validator import validate

from edgefleet.controller.service import Controller
from edgefleet.profiles import DeviceProfile

# Every operation the API promises, as (method, path).
EXPECTED_OPERATIONS = {
    ("get", "/api/v1/health"),
    ("get", "/api/v1/devices"),
    ("get", "/api/v1/devices/{device_id}"),
    ("get", "/api/v1/devices/{device_id}/telemetry"),
    ("get", "/api/v1/devices/{device_id}/ladder"),
    ("get", "/api/v1/devices/{device_id}/deployments"),
    ("post", "/api/v1/devices/{device_id}/deployments"),
    ("put", "/api/v1/devices/{device_id}/pin"),
    ("delete", "/api/v1/devices/{device_id}/pin"),
    ("get", "/api/v1/models"),
    ("post", "/api/v1/models"),
    ("get", "/api/v1/models/{model_id}"),
    ("get", "/api/v1/models/{model_id}/variants"),
    ("get", "/api/v1/deployments"),
    ("get", "/api/v1/deployments/{deployment_id}"),
    ("get", "/api/v1/rollouts"),
    ("post", "/api/v1/rollouts"),
    ("get", "/api/v1/rollouts/{rollout_id}"),
    ("post", "/api/v1/rollouts/{rollout_id}/pause"),
    ("post", "/api/v1/rollouts/{rollout_id}/resume"),
    ("post", "/api/v1/rollouts/{rollout_id}/abort"),
    ("get", "/api/v1/events"),
    ("get", "/metrics"),
}


@pytest.fixture
def api(controller: Controller, profile: DeviceProfile) -> Iterator[ApiFleet]:
    with serve_api(controller, profile) as fleet:
        yield fleet


def test_openapi_document_is_valid(api: ApiFleet) -> None:
    response = api.client.get("/api/v1/openapi.json")

    assert response.status_code == 200
    document = response.json()
    validate(document)
    assert document["openapi"].startswith("3.1")
    assert document["info"]["title"] == "edgefleet controller API"


def test_openapi_lists_every_route(api: ApiFleet) -> None:
    document = api.client.get("/api/v1/openapi.json").json()
    documented = {(method, path) for path, item in document["paths"].items() for method in item}

    assert documented == EXPECTED_OPERATIONS


@pytest.mark.parametrize(("method", "path"), sorted(EXPECTED_OPERATIONS))
def test_openapi_route_is_served(api: ApiFleet, method: str, path: str) -> None:
    url = path.format(device_id="ghost", model_id="0000", deployment_id="0", rollout_id="0")
    kwargs = {"json": {}} if method in ("post", "put") and "/rollouts/" not in path else {}

    response = api.client.request(method.upper(), url, **kwargs)

    # Unknown ids and empty bodies fail, but with the route's own errors. A route
    # missing from the app would respond with the generic not_found or 405.
    assert response.status_code != 405, response.text
    if response.status_code == 404:
        assert response.json()["error"]["code"] != "not_found", response.text


def test_openapi_operations_document_errors(api: ApiFleet) -> None:
    document = api.client.get("/api/v1/openapi.json").json()

    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert operation.get("summary"), (method, path)
            if path.startswith("/api/v1/"):
                assert "404" in operation["responses"], (method, path)
                assert "422" in operation["responses"], (method, path)
    error = document["components"]["schemas"]["ErrorResponse"]
    assert error["properties"]["error"]["$ref"].endswith("/ErrorBody")


def test_openapi_documents_upload_and_queries(api: ApiFleet) -> None:
    paths = api.client.get("/api/v1/openapi.json").json()["paths"]

    upload = paths["/api/v1/models"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in upload
    telemetry_operation = paths["/api/v1/devices/{device_id}/telemetry"]["get"]
    telemetry = {parameter["name"] for parameter in telemetry_operation["parameters"]}
    assert {"device_id", "since", "until", "step", "limit"} <= telemetry
    events = {parameter["name"] for parameter in paths["/api/v1/events"]["get"]["parameters"]}
    assert {"device_id", "kind", "since", "after_id", "limit", "wait"} <= events


def test_docs_page_served(api: ApiFleet) -> None:
    response = api.client.get("/api/v1/docs")

    assert response.status_code == 200
    assert "/api/v1/openapi.json" in response.text
