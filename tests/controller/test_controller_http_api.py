"""The HTTP API against a real controller on SQLite, over real HTTP on loopback."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from api_support import ApiFleet, at, npz_bytes, serve_api, store_series
from controller_support import BACKENDS, make_sample

from edgefleet.controller.models import DeviceState, EventKind
from edgefleet.controller.service import Controller
from edgefleet.profiles import DeviceProfile
from edgefleet.protos.v1 import fleet_pb2

# Every test runs on SQLite and on a real PostgreSQL server.
pytestmark = pytest.mark.parametrize("database_url", BACKENDS, indirect=True)

REFERENCE_ONNX = Path(__file__).parents[2] / "agent" / "reference.onnx"


@pytest.fixture
def api(controller: Controller, profile: DeviceProfile) -> Iterator[ApiFleet]:
    with serve_api(controller, profile) as fleet:
        controller.register_device("dev-1", profile)
        controller.register_device("dev-2", profile)
        assert controller.wait_until_idle(30)
        yield fleet


def assert_error(response: httpx.Response, status: int, code: str, *words: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    for word in words:
        assert word in error["message"]
    return error


# -- health and devices ------------------------------------------------------------------


def test_health_reports_running(api: ApiFleet) -> None:
    body = api.client.get("/api/v1/health").json()

    assert body["status"] == "ok"
    assert body["controller_state"] == "running"


def test_devices_list_shows_state_and_telemetry(api: ApiFleet) -> None:
    sample = make_sample("dev-1", latency_p95_ms=4.0, variant_id=api.ladder[0])
    record = api.controller.ingest_telemetry("dev-1", sample)
    assert record is not None

    devices = {d["device_id"]: d for d in api.client.get("/api/v1/devices").json()["devices"]}

    assert set(devices) == {"dev-1", "dev-2"}
    first = devices["dev-1"]
    assert first["profile_name"] == "test-board"
    assert first["online"] is False
    assert first["state"] == "offline"
    assert first["desired_variant_id"] == api.ladder[0]
    assert first["latency_budget_ms"] == 20.0
    assert first["within_budget"] is True
    assert first["last_telemetry"]["latency_p95_ms"] == 4.0
    assert first["last_telemetry"]["cpu_percent"] == 12.5
    assert devices["dev-2"]["last_telemetry"] is None
    assert devices["dev-2"]["within_budget"] is None


def test_device_serving_no_model_not_within_budget(api: ApiFleet) -> None:
    # Figures well inside the budget, but the agent serves nothing.
    api.controller.ingest_telemetry("dev-1", make_sample("dev-1", latency_p95_ms=1.0))

    device = api.client.get("/api/v1/devices/dev-1").json()

    assert device["last_telemetry"]["variant_id"] == ""
    assert device["within_budget"] is False


def test_device_over_budget_is_flagged(api: ApiFleet) -> None:
    api.controller.ingest_telemetry("dev-1", make_sample("dev-1", latency_p95_ms=35.0))

    device = api.client.get("/api/v1/devices/dev-1").json()

    assert device["within_budget"] is False


def test_device_shows_online_session(api: ApiFleet, stub: object) -> None:
    from controller_support import AgentStream, wait_for

    stream = AgentStream(stub)
    try:
        stream.hello("dev-1")
        wait_for(lambda: api.client.get("/api/v1/devices/dev-1").json()["online"])
        assert api.client.get("/api/v1/devices/dev-2").json()["online"] is False
    finally:
        stream.close()


def test_device_dropped_samples_counted(api: ApiFleet) -> None:
    api.controller.ingest_telemetry("dev-1", make_sample("dev-1", cpu_percent=float("nan")))

    device = api.client.get("/api/v1/devices/dev-1").json()

    assert device["dropped_samples"] == 1


def test_unknown_device_is_404(api: ApiFleet) -> None:
    for path in (
        "/api/v1/devices/ghost",
        "/api/v1/devices/ghost/telemetry",
        "/api/v1/devices/ghost/ladder",
        "/api/v1/devices/ghost/deployments",
    ):
        error = assert_error(api.client.get(path), 404, "device_not_found", "'ghost'")
        assert error["field"] == "device_id"


@pytest.mark.parametrize("device_id", ["g\u00fcnther", "x" * 5_000, "-starts-with-dash"])
def test_impossible_device_id_is_400(api: ApiFleet, device_id: str) -> None:
    for suffix in ("", "/telemetry", "/ladder"):
        response = api.client.get(f"/api/v1/devices/{device_id}{suffix}")

        error = assert_error(response, 400, "invalid_input", "invalid device id", "1-64 characters")
        assert len(error["message"]) < 400


# -- telemetry history -------------------------------------------------------------------


def test_telemetry_returns_ingested_samples(api: ApiFleet) -> None:
    for seq in range(1, 4):
        api.controller.ingest_telemetry(
            "dev-1", make_sample("dev-1", seq=seq, latency_p95_ms=float(seq))
        )

    body = api.client.get("/api/v1/devices/dev-1/telemetry").json()

    assert body["step_s"] is None
    assert body["truncated"] is False
    assert [point["latency_p95_ms"] for point in body["points"]] == [1.0, 2.0, 3.0]
    assert all(point["samples"] == 1 for point in body["points"])


def test_telemetry_time_range_filters(api: ApiFleet) -> None:
    store_series(api.controller, "dev-1", [1.0, 2.0, 3.0, 4.0, 5.0], interval_s=10)

    body = api.client.get(
        "/api/v1/devices/dev-1/telemetry",
        params={"since": at(10).isoformat(), "until": str(at(30).timestamp())},
    ).json()

    assert [point["latency_p95_ms"] for point in body["points"]] == [2.0, 3.0, 4.0]
    assert body["since"] == "2026-01-05T12:00:10Z"


def test_telemetry_accepts_unencoded_offset(api: ApiFleet) -> None:
    store_series(api.controller, "dev-1", [1.0, 2.0, 3.0], interval_s=10)

    # "+" left unencoded in a query string decodes as a space.
    response = api.client.get("/api/v1/devices/dev-1/telemetry?since=2026-01-05T14:00:10+02:00")

    assert response.status_code == 200, response.text
    assert [point["latency_p95_ms"] for point in response.json()["points"]] == [2.0, 3.0]


def test_telemetry_downsampled_in_buckets(api: ApiFleet) -> None:
    # Twelve samples 10 s apart: buckets of 60 s hold six each.
    values = [float(v) for v in range(1, 13)]
    store_series(api.controller, "dev-1", values, interval_s=10)

    body = api.client.get("/api/v1/devices/dev-1/telemetry", params={"step": 60}).json()

    points = body["points"]
    assert body["step_s"] == 60
    assert [point["samples"] for point in points] == [6, 6]
    assert points[0]["at"] == "2026-01-05T12:00:00Z"
    assert points[1]["at"] == "2026-01-05T12:01:00Z"
    assert points[0]["latency_p95_ms"] == pytest.approx(3.5)
    assert points[1]["latency_p95_ms"] == pytest.approx(9.5)
    assert points[1]["latency_p95_max_ms"] == 12.0
    assert points[0]["requests"] == 60


def test_telemetry_limit_keeps_newest(api: ApiFleet) -> None:
    store_series(api.controller, "dev-1", [1.0, 2.0, 3.0, 4.0], interval_s=60)

    raw = api.client.get("/api/v1/devices/dev-1/telemetry", params={"limit": 2}).json()
    buckets = api.client.get(
        "/api/v1/devices/dev-1/telemetry", params={"limit": 3, "step": 60}
    ).json()

    assert raw["truncated"] is True
    assert [point["latency_p95_ms"] for point in raw["points"]] == [3.0, 4.0]
    assert buckets["truncated"] is True
    assert [point["latency_p95_ms"] for point in buckets["points"]] == [2.0, 3.0, 4.0]


@pytest.mark.parametrize(
    ("params", "status", "words"),
    [
        ({"since": at(60).isoformat(), "until": at(0).isoformat()}, 400, ["is after until"]),
        ({"since": "yesterday"}, 400, ["'yesterday' is not a time", "ISO 8601"]),
        ({"since": "2026-01-05T12:00:00"}, 400, ["no UTC offset", "append Z"]),
        ({"until": "nan"}, 400, ["until='nan'"]),
        ({"until": "1e300"}, 400, ["out of range"]),
        ({"step": 0}, 422, ["query parameter step", "greater than or equal to 1"]),
        ({"step": "ten"}, 422, ["query parameter step", "'ten'"]),
        ({"limit": 100_001}, 422, ["query parameter limit"]),
    ],
)
def test_telemetry_rejects_bad_range(
    api: ApiFleet, params: dict, status: int, words: list[str]
) -> None:
    response = api.client.get("/api/v1/devices/dev-1/telemetry", params=params)

    code = "invalid_input" if status == 400 else "validation_failed"
    assert_error(response, status, code, *words)


# -- ladder, models and variants ---------------------------------------------------------


def test_device_ladder_lists_rungs(api: ApiFleet) -> None:
    body = api.client.get("/api/v1/devices/dev-1/ladder").json()

    assert body["model_id"] == api.model.id
    assert [rung["variant_id"] for rung in body["ladder"]] == api.ladder
    assert [rung["ladder_rank"] for rung in body["ladder"]] == [0, 1, 2]


def test_models_list_marks_active(api: ApiFleet) -> None:
    body = api.client.get("/api/v1/models").json()

    assert body["active_model_id"] == api.model.id
    assert [model["model_id"] for model in body["models"]] == [api.model.id]
    assert body["models"][0]["active"] is True
    assert set(body["models"][0]["plans"].values()) == {"done"}


def test_model_variants_have_metrics_and_front(api: ApiFleet, profile: DeviceProfile) -> None:
    body = api.client.get(f"/api/v1/models/{api.model.id}/variants").json()

    [group] = body["profiles"]
    assert group["profile_fingerprint"] == profile.fingerprint
    assert group["profile_name"] == "test-board"
    assert group["ladder"] == api.ladder
    # The fake ladder gets faster and less accurate with each rung: all on the front.
    assert group["pareto_front"] == list(reversed(api.ladder))
    first = group["variants"][0]
    assert first["accuracy"] == pytest.approx(0.9)
    assert first["latency_p95_ms"] == 10.0
    assert first["peak_memory_mb"] == 50.0
    assert first["size_bytes"] > 0
    assert first["on_pareto_front"] is True


def test_model_variants_filter_by_profile_name(api: ApiFleet) -> None:
    found = api.client.get(
        f"/api/v1/models/{api.model.id}/variants", params={"profile": "test-board"}
    )
    missing = api.client.get(
        f"/api/v1/models/{api.model.id}/variants", params={"profile": "toaster"}
    )

    assert len(found.json()["profiles"]) == 1
    assert_error(missing, 404, "profile_not_found", "'toaster'", "test-board")


def test_unknown_model_is_404(api: ApiFleet) -> None:
    for path in ("/api/v1/models/0000", "/api/v1/models/0000/variants"):
        assert_error(api.client.get(path), 404, "model_not_found", "'0000'")


# -- deployments, pin --------------------------------------------------------------------


def test_deploy_creates_pending_deployment(api: ApiFleet) -> None:
    response = api.client.post(
        "/api/v1/devices/dev-1/deployments",
        json={"variant_id": api.ladder[2], "reason": "test deploy"},
    )

    assert response.status_code == 201, response.text
    deployment = response.json()
    assert deployment["variant_id"] == api.ladder[2]
    assert deployment["state"] == "pending"
    assert deployment["reason"] == "test deploy"
    fetched = api.client.get(f"/api/v1/deployments/{deployment['deployment_id']}").json()
    assert fetched == deployment
    device = api.client.get("/api/v1/devices/dev-1").json()
    assert device["desired_variant_id"] == api.ladder[2]


def test_deployments_listed_newest_first(api: ApiFleet) -> None:
    api.client.post("/api/v1/devices/dev-1/deployments", json={"variant_id": api.ladder[1]})
    api.client.post("/api/v1/devices/dev-1/deployments", json={"variant_id": api.ladder[2]})

    of_device = api.client.get("/api/v1/devices/dev-1/deployments").json()["deployments"]
    fleet = api.client.get("/api/v1/deployments").json()["deployments"]
    superseded = api.client.get("/api/v1/deployments", params={"state": "superseded"}).json()

    assert [d["variant_id"] for d in of_device] == [api.ladder[2], api.ladder[1], api.ladder[0]]
    assert [d["state"] for d in of_device] == ["pending", "superseded", "superseded"]
    assert {d["device_id"] for d in fleet} == {"dev-1", "dev-2"}
    assert {d["state"] for d in superseded["deployments"]} == {"superseded"}


def test_deploy_reaches_connected_agent(api: ApiFleet, stub: object) -> None:
    from controller_support import AgentStream

    stream = AgentStream(stub)
    try:
        stream.hello("dev-2", current_variant_id=api.ladder[0])
        deployment = api.client.post(
            "/api/v1/devices/dev-2/deployments", json={"variant_id": api.ladder[1]}
        ).json()
        command = None
        for message in stream.responses:
            is_deploy = message.HasField("command") and message.command.HasField("deploy")
            if is_deploy and message.command.deploy.deployment_id == deployment["deployment_id"]:
                command = message.command.deploy
                break
        assert command is not None
        assert command.manifest.variant_id == api.ladder[1]

        stream.send(
            fleet_pb2.AgentMessage(
                status=fleet_pb2.DeploymentStatus(
                    device_id="dev-2",
                    deployment_id=deployment["deployment_id"],
                    variant_id=api.ladder[1],
                    state=fleet_pb2.DEPLOYMENT_STATE_ACTIVE,
                )
            )
        )
        deadline = time.monotonic() + 10
        state = None
        while time.monotonic() < deadline:
            url = f"/api/v1/deployments/{deployment['deployment_id']}"
            state = api.client.get(url).json()["state"]
            if state == "active":
                break
            time.sleep(0.05)
        assert state == "active"
        device = api.client.get("/api/v1/devices/dev-2").json()
        assert device["current_variant_id"] == api.ladder[1]
    finally:
        stream.close()


def test_deploy_rejects_bad_input(api: ApiFleet) -> None:
    unknown_variant = api.client.post(
        "/api/v1/devices/dev-1/deployments", json={"variant_id": "nope"}
    )
    unknown_device = api.client.post(
        "/api/v1/devices/ghost/deployments", json={"variant_id": api.ladder[0]}
    )
    misspelt = api.client.post("/api/v1/devices/dev-1/deployments", json={"variant": "x"})
    not_json = api.client.post(
        "/api/v1/devices/dev-1/deployments",
        content=b"{variant_id:",
        headers={"Content-Type": "application/json"},
    )

    assert_error(
        unknown_variant, 404, "variant_not_found", "'nope'", "only the active model's variants"
    )
    assert_error(unknown_device, 404, "device_not_found", "'ghost'")
    assert_error(misspelt, 422, "validation_failed", "variant_id", "Field required", "variant")
    assert_error(not_json, 422, "validation_failed", "JSON")


def test_unknown_deployment_is_404(api: ApiFleet) -> None:
    response = api.client.get("/api/v1/deployments/feedface")

    assert_error(response, 404, "deployment_not_found", "'feedface'")


def test_pin_to_variant_and_unpin(api: ApiFleet) -> None:
    pinned = api.client.put("/api/v1/devices/dev-1/pin", json={"variant_id": api.ladder[1]})

    assert pinned.status_code == 200, pinned.text
    assert pinned.json()["pinned"] is True
    assert pinned.json()["desired_variant_id"] == api.ladder[1]
    unpinned = api.client.delete("/api/v1/devices/dev-1/pin")
    assert unpinned.json()["pinned"] is False


def test_pin_without_body_keeps_target(api: ApiFleet) -> None:
    before = api.client.get("/api/v1/devices/dev-2").json()

    pinned = api.client.put("/api/v1/devices/dev-2/pin").json()

    assert pinned["pinned"] is True
    assert pinned["desired_variant_id"] == before["desired_variant_id"]


def test_pin_to_unknown_variant_leaves_unpinned(api: ApiFleet) -> None:
    response = api.client.put("/api/v1/devices/dev-1/pin", json={"variant_id": "nope"})

    assert_error(response, 404, "variant_not_found", "'nope'")
    assert api.client.get("/api/v1/devices/dev-1").json()["pinned"] is False


# -- model upload ------------------------------------------------------------------------


def test_register_model_upload(controller: Controller, profile: DeviceProfile) -> None:
    with serve_api(controller, profile) as fleet:
        response = fleet.client.post(
            "/api/v1/models",
            files={
                "model": ("reference.onnx", REFERENCE_ONNX.read_bytes()),
                "data": ("eval.npz", npz_bytes()),
            },
            data={"name": "uploaded"},
        )

        assert response.status_code == 201, response.text
        model = response.json()
        assert model["name"] == "uploaded"
        assert model["active"] is True
        assert model["source"].endswith("reference.onnx")
        assert Path(model["source"]).is_file()
        assert Path(model["source"]).is_relative_to(controller.data_dir / "uploads")
        listed = fleet.client.get("/api/v1/models").json()
        assert listed["active_model_id"] == model["model_id"]
        events = fleet.client.get("/api/v1/events", params={"kind": "model_registered"}).json()
        assert events["events"][-1]["details"]["model_id"] == model["model_id"]


def test_register_same_model_twice(controller: Controller, profile: DeviceProfile) -> None:
    data = npz_bytes()
    with serve_api(controller, profile) as fleet:
        responses = [
            fleet.client.post(
                "/api/v1/models",
                files={"model": (filename, REFERENCE_ONNX.read_bytes()), "data": ("d.npz", data)},
            )
            for filename in ("reference.onnx", "reference.onnx", "renamed.onnx")
        ]
        models = fleet.client.get("/api/v1/models").json()["models"]

    for response in responses:
        assert response.status_code == 201, response.text
    assert len({response.json()["model_id"] for response in responses}) == 1
    assert len(models) == 2  # the fake ladder's model and the uploaded one


def test_register_model_rejects_bad_files(controller: Controller, profile: DeviceProfile) -> None:
    with serve_api(controller, profile) as fleet:

        def upload(model: tuple[str, bytes], data: tuple[str, bytes]) -> httpx.Response:
            return fleet.client.post("/api/v1/models", files={"model": model, "data": data})

        wrong_suffix = upload(("model.pt", b"x"), ("eval.npz", npz_bytes()))
        not_onnx = upload(("model.onnx", b"not a protobuf"), ("eval.npz", npz_bytes()))
        not_npz = upload(("reference.onnx", REFERENCE_ONNX.read_bytes()), ("eval.npz", b"x"))
        missing_data = fleet.client.post(
            "/api/v1/models", files={"model": ("m.onnx", REFERENCE_ONNX.read_bytes())}
        )
        wrong_shape = upload(
            ("reference.onnx", REFERENCE_ONNX.read_bytes()), ("eval.npz", npz_bytes((4, 8)))
        )
        models = fleet.client.get("/api/v1/models").json()

    error = assert_error(wrong_suffix, 400, "invalid_input", "'model.pt'", ".onnx")
    assert error["field"] == "model"
    assert_error(not_onnx, 400, "invalid_input", "not a valid ONNX model")
    error = assert_error(not_npz, 400, "invalid_input", "data file")
    assert error["field"] == "data"
    assert_error(missing_data, 422, "validation_failed", "body field data", "Field required")
    assert_error(wrong_shape, 400, "invalid_input", "rejects dataset samples of shape (4, 8)")
    # No rejected upload became a model: only the fake ladder's model is registered.
    assert len(models["models"]) == 1
    assert not any((controller.data_dir / "uploads").iterdir()), "rejected files were kept"


def test_register_model_rejects_split_model(
    controller: Controller, profile: DeviceProfile, tmp_path: Path
) -> None:
    import onnx

    split = tmp_path / "split.onnx"
    onnx.save(
        onnx.load(str(REFERENCE_ONNX)),
        str(split),
        save_as_external_data=True,
        location="split.weights",
        size_threshold=0,
    )
    with serve_api(controller, profile) as fleet:
        response = fleet.client.post(
            "/api/v1/models",
            files={"model": ("split.onnx", split.read_bytes()), "data": ("d.npz", npz_bytes())},
        )

    error = assert_error(
        response, 400, "invalid_input", "'split.onnx'", "(split.weights)", "edgefleet register"
    )
    assert error["field"] == "model"


def test_register_model_rejects_oversized_upload(
    controller: Controller, profile: DeviceProfile
) -> None:
    limit = 64 * 1024
    with serve_api(controller, profile, max_upload_bytes=limit) as fleet:
        declared = fleet.client.post(
            "/api/v1/models",
            files={"model": ("big.onnx", b"\0" * (limit + 1)), "data": ("d.npz", b"x")},
        )

        def chunks() -> Iterator[bytes]:
            yield (
                b"--xyz\r\n"
                b'Content-Disposition: form-data; name="model"; filename="big.onnx"\r\n'
                b"Content-Type: application/octet-stream\r\n\r\n"
            )
            for _ in range(8):
                yield b"\0" * (limit // 4)

        # A generator body is sent chunked, without Content-Length.
        chunked = fleet.client.post(
            "/api/v1/models",
            content=chunks(),
            headers={"Content-Type": "multipart/form-data; boundary=xyz"},
        )
        models_after = fleet.client.get("/api/v1/models").json()["models"]

    for response in (declared, chunked):
        error = assert_error(response, 413, "upload_too_large", f"{limit} bytes", "MiB")
        assert "--http-max-upload-mb" in error["message"]
    assert "content-length" not in chunked.request.headers
    assert [model["name"] for model in models_after] == ["fake"]


# -- events ------------------------------------------------------------------------------


def test_events_filter_by_device_and_kind(api: ApiFleet) -> None:
    body = api.client.get(
        "/api/v1/events", params={"device_id": "dev-2", "kind": "registered"}
    ).json()

    assert len(body["events"]) == 1
    assert body["events"][0]["device_id"] == "dev-2"
    assert body["events"][0]["kind"] == "registered"
    assert body["last_id"] == body["events"][0]["id"]


def test_events_since_and_limit(api: ApiFleet) -> None:
    everything = api.client.get("/api/v1/events").json()["events"]
    later = api.client.get(
        "/api/v1/events", params={"since": datetime.now(UTC).isoformat()}
    ).json()["events"]
    newest_two = api.client.get("/api/v1/events", params={"limit": 2}).json()["events"]

    assert len(everything) >= 4
    assert later == []
    assert [event["id"] for event in newest_two] == [e["id"] for e in everything[-2:]]


def test_events_after_id_returns_next_page(api: ApiFleet) -> None:
    everything = api.client.get("/api/v1/events").json()["events"]
    first = everything[0]["id"]

    page = api.client.get("/api/v1/events", params={"after_id": first, "limit": 2}).json()

    assert [event["id"] for event in page["events"]] == [e["id"] for e in everything[1:3]]
    assert page["last_id"] == everything[2]["id"]


def test_events_long_poll_wakes_on_new_event(api: ApiFleet, profile: DeviceProfile) -> None:
    last_id = api.client.get("/api/v1/events").json()["last_id"]
    result: dict[str, object] = {}

    def follow() -> None:
        started = time.monotonic()
        response = api.client.get("/api/v1/events", params={"after_id": last_id, "wait": 20})
        result["body"] = response.json()
        result["elapsed_s"] = time.monotonic() - started

    follower = threading.Thread(target=follow)
    follower.start()
    time.sleep(0.5)
    api.controller.register_device("dev-3", profile)
    follower.join(timeout=20)

    body = result["body"]
    assert isinstance(body, dict)
    assert body["events"][0]["kind"] == EventKind.REGISTERED.value
    assert body["events"][0]["device_id"] == "dev-3"
    assert 0.4 < float(result["elapsed_s"]) < 10  # type: ignore[arg-type]


def test_events_long_poll_times_out_empty(api: ApiFleet) -> None:
    last_id = api.client.get("/api/v1/events").json()["last_id"]

    started = time.monotonic()
    body = api.client.get("/api/v1/events", params={"after_id": last_id, "wait": 0.5}).json()

    assert body == {"events": [], "last_id": last_id}
    assert time.monotonic() - started >= 0.5


@pytest.mark.parametrize(
    ("params", "status", "words"),
    [
        ({"kind": "exploded"}, 400, ["'exploded'", "registered"]),
        ({"wait": 5}, 400, ["needs after_id"]),
        ({"after_id": 0, "wait": 61}, 422, ["query parameter wait"]),
        ({"since": "soon"}, 400, ["'soon'"]),
        ({"limit": 0}, 422, ["query parameter limit"]),
        ({"after_id": 2**63}, 422, ["query parameter after_id", str(2**63 - 1)]),
    ],
)
def test_events_reject_bad_query(
    api: ApiFleet, params: dict, status: int, words: list[str]
) -> None:
    response = api.client.get("/api/v1/events", params=params)

    code = "invalid_input" if status == 400 else "validation_failed"
    assert_error(response, status, code, *words)


def test_events_long_poll_returns_when_server_stops(
    api: ApiFleet, caplog: pytest.LogCaptureFixture
) -> None:
    last_id = api.client.get("/api/v1/events", params={"limit": 1}).json()["last_id"]
    answers: list[httpx.Response] = []

    def long_poll() -> None:
        with httpx.Client(headers=api.client.headers, timeout=60) as client:
            answers.append(
                client.get(f"{api.url}/api/v1/events", params={"after_id": last_id, "wait": 30})
            )

    poller = threading.Thread(target=long_poll)
    poller.start()
    time.sleep(0.5)  # the request is waiting in the server by now
    started = time.monotonic()
    api.server.stop()
    stop_s = time.monotonic() - started
    poller.join(timeout=10)

    assert len(answers) == 1
    assert answers[0].status_code == 200, answers[0].text
    assert answers[0].json() == {"events": [], "last_id": last_id}
    # uvicorn would wait its 2 s grace period for the request, then cancel it.
    assert stop_s < 1.5
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert errors == []


# -- rollouts ----------------------------------------------------------------------------


def test_rollout_start_pause_resume_abort(api: ApiFleet) -> None:
    started = api.client.post(
        "/api/v1/rollouts",
        json={"target": "devices:dev-1,dev-2", "waves": ["1", "100%"], "gates": {"soak_s": 60}},
    )

    assert started.status_code == 201, started.text
    rollout = started.json()
    rollout_id = rollout["rollout_id"]
    assert rollout["state"] == "running"
    assert rollout["model_id"] == api.model.id
    assert [wave["spec"] for wave in rollout["waves"]] == ["1", "100%"]
    assert {device["device_id"] for device in rollout["devices"]} == {"dev-1", "dev-2"}

    listed = api.client.get("/api/v1/rollouts").json()["rollouts"]
    assert [item["rollout_id"] for item in listed] == [rollout_id]
    assert api.client.get(f"/api/v1/rollouts/{rollout_id}").json()["rollout_id"] == rollout_id

    paused = api.client.post(f"/api/v1/rollouts/{rollout_id}/pause", json={"reason": "lunch"})
    assert paused.json()["state"] == "paused"
    assert_error(api.client.post(f"/api/v1/rollouts/{rollout_id}/pause"), 409, "conflict", "paused")
    resumed = api.client.post(f"/api/v1/rollouts/{rollout_id}/resume")
    assert resumed.json()["state"] == "running"
    aborted = api.client.post(f"/api/v1/rollouts/{rollout_id}/abort", json={"reason": "test"})
    assert aborted.json()["state"] == "aborted"

    kinds = [
        event["kind"]
        for event in api.client.get("/api/v1/events", params={"limit": 1000}).json()["events"]
    ]
    for kind in ("rollout_started", "rollout_paused", "rollout_resumed", "rollout_aborted"):
        assert kind in kinds


def test_rollout_rejects_bad_input(api: ApiFleet) -> None:
    bad_waves = api.client.post("/api/v1/rollouts", json={"waves": ["50%", "25%"]})
    empty_waves = api.client.post("/api/v1/rollouts", json={"waves": []})
    bad_target = api.client.post("/api/v1/rollouts", json={"target": "everyone"})
    unknown_device = api.client.post("/api/v1/rollouts", json={"target": "devices:ghost"})
    unknown_field = api.client.post("/api/v1/rollouts", json={"wave": ["1", "100%"]})
    unknown_rollout = api.client.get("/api/v1/rollouts/nope")
    unknown_action = api.client.post("/api/v1/rollouts/nope/abort")

    assert_error(bad_waves, 400, "invalid_input", "25%")
    assert_error(empty_waves, 400, "invalid_input", "waves")
    assert_error(bad_target, 400, "invalid_input", "'everyone'")
    assert_error(unknown_device, 404, "device_not_found", "ghost")
    assert_error(unknown_field, 422, "validation_failed", "wave")
    assert_error(unknown_rollout, 404, "rollout_not_found", "nope")
    assert_error(unknown_action, 404, "rollout_not_found", "nope")


def test_rollout_list_filters_by_state(api: ApiFleet) -> None:
    rollout = api.client.post("/api/v1/rollouts", json={"target": "devices:dev-1"}).json()
    api.client.post(f"/api/v1/rollouts/{rollout['rollout_id']}/abort")

    aborted = api.client.get("/api/v1/rollouts", params={"state": "aborted"}).json()
    running = api.client.get("/api/v1/rollouts", params={"state": "running"}).json()
    invalid = api.client.get("/api/v1/rollouts", params={"state": "exploded"})

    assert [r["rollout_id"] for r in aborted["rollouts"]] == [rollout["rollout_id"]]
    assert running["rollouts"] == []
    assert_error(invalid, 422, "validation_failed", "query parameter state")


def test_rollout_start_reports_and_leaves_out_offline_devices(api: ApiFleet) -> None:
    api.controller.registry.set_presence(["dev-2"], DeviceState.ONLINE, reason="test")

    started = api.client.post("/api/v1/rollouts", json={"waves": ["1", "100%"]})
    assert started.status_code == 201, started.text
    rollout = started.json()
    assert rollout["offline_device_ids"] == ["dev-1"]
    assert rollout["left_out_device_ids"] == []
    # The online device that needs the update is the canary.
    assert rollout["waves"][0]["device_ids"] == ["dev-2"]
    fetched = api.client.get(f"/api/v1/rollouts/{rollout['rollout_id']}").json()
    assert "offline_device_ids" not in fetched
    api.client.post(f"/api/v1/rollouts/{rollout['rollout_id']}/abort")

    online = api.client.post("/api/v1/rollouts", json={"online_only": True}).json()
    assert [device["device_id"] for device in online["devices"]] == ["dev-2"]
    assert online["offline_device_ids"] == []
    assert online["left_out_device_ids"] == ["dev-1"]


@pytest.mark.parametrize(
    ("gates", "words"),
    [
        ({"soak_s": 1e300}, ["gates.soak_s", "86400 (a day)"]),
        ({"deploy_timeout_s": 1e9}, ["gates.deploy_timeout_s", "604800 (a week)"]),
    ],
)
def test_rollout_rejects_unbounded_gates(api: ApiFleet, gates: dict, words: list[str]) -> None:
    response = api.client.post("/api/v1/rollouts", json={"gates": gates})

    assert_error(response, 400, "invalid_input", *words)
    assert api.client.get("/api/v1/rollouts").json()["rollouts"] == []


# -- generic errors ----------------------------------------------------------------------


def test_unknown_route_and_method(api: ApiFleet) -> None:
    assert_error(api.client.get("/api/v2/devices"), 404, "not_found", "/api/v1")
    assert_error(api.client.delete("/api/v1/devices"), 405, "method_not_allowed", "DELETE")


def test_stopped_controller_is_503(controller: Controller, profile: DeviceProfile) -> None:
    with serve_api(controller, profile) as fleet:
        controller.shutdown(grace_s=0)
        health = fleet.client.get("/api/v1/health")
        devices = fleet.client.get("/api/v1/devices")

    assert_error(health, 503, "unavailable", "stopped")
    assert_error(devices, 503, "unavailable", "retry")
