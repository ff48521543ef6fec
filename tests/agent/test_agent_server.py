from __future__ import annotations

import http.client
import json

import pytest

from edgefleet.agent.runtime import ModelRuntime
from edgefleet.agent.server import MAX_BODY_BYTES, InferenceServer


@pytest.fixture
def runtime():
    return ModelRuntime(threads=1)


@pytest.fixture
def server(runtime):
    api = InferenceServer(runtime, port=0)
    api.start()
    yield api
    api.stop()


@pytest.fixture
def serving(runtime, server, affine_variant):
    path, manifest = affine_variant(scale=2.0, bias=1.0)
    runtime.load(path, manifest)
    return manifest


def request(server, method: str, path: str, body: bytes | None = None, headers=None):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def post_json(server, payload) -> tuple[int, dict]:
    return request(server, "POST", "/v1/infer", json.dumps(payload).encode())


def test_server_binds_loopback_by_default(server):
    assert server.host == "127.0.0.1"
    assert server.port > 0


def test_server_health_503_before_model(server):
    status, body = request(server, "GET", "/v1/health")
    assert status == 503
    assert body["variant_id"] is None


def test_server_infer_503_before_model(server):
    status, body = post_json(server, {"input": [[0, 0, 0, 0]]})
    assert status == 503
    assert "no model" in body["error"]


def test_server_health_200_with_variant(server, serving):
    status, body = request(server, "GET", "/v1/health")
    assert status == 200
    assert body["variant_id"] == serving.variant_id


def test_server_model_summary(server, serving):
    status, body = request(server, "GET", "/v1/model")
    assert status == 200
    assert body["sha256"] == serving.sha256
    assert body["inputs"] == [{"name": "x", "type": "TENSOR_TYPE_FLOAT32", "shape": [-1, 4]}]


@pytest.mark.parametrize(
    "payload",
    [{"inputs": {"x": [[1, 2, 3, 4], [0, 0, 0, 0]]}}, {"input": [[1, 2, 3, 4], [0, 0, 0, 0]]}],
)
def test_server_infer_happy_path(server, serving, payload):
    status, body = post_json(server, payload)

    assert status == 200
    assert body["outputs"] == {"y": [[3.0, 5.0, 7.0, 9.0], [1.0, 1.0, 1.0, 1.0]]}
    assert body["variant_id"] == serving.variant_id
    assert body["latency_ms"] > 0


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"inputs": {"x": [[1, 2, 3]]}}, "input 'x' has shape [1, 3], expected [N, 4]"),
        ({"inputs": {"x": [[1, 2], [3]]}}, "input 'x' is not a rectangular array"),
        ({"inputs": {"x": [["a", "b", "c", "d"]]}}, "input 'x' must contain only numbers"),
        ({"inputs": {"image": [[1, 2, 3, 4]]}}, "unknown input(s) ['image']"),
        ({"inputs": [1, 2]}, '"inputs" must map input names to arrays'),
        ({"values": []}, 'needs "inputs" or "input"'),
        ([1, 2, 3], "must be a JSON object"),
    ],
)
def test_server_infer_rejects_bad_input(server, serving, payload, message):
    status, body = post_json(server, payload)
    assert status == 400
    assert message in body["error"]


def test_server_infer_rejects_malformed_json(server, serving):
    status, body = request(server, "POST", "/v1/infer", b'{"inputs": ')
    assert status == 400
    assert "not valid JSON" in body["error"]


def test_server_infer_rejects_oversized_body(server, serving):
    body = b" " * (MAX_BODY_BYTES + 1)
    status, payload = request(server, "POST", "/v1/infer", body)
    assert status == 413
    assert str(MAX_BODY_BYTES) in payload["error"]


def test_server_unknown_path_404(server):
    status, _ = request(server, "GET", "/v2/anything")
    assert status == 404


def test_server_wrong_method_405(server):
    status, body = request(server, "GET", "/v1/infer")
    assert status == 405
    assert "POST" in body["error"]


def test_server_keeps_connection_alive_between_requests(server, serving):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        for _ in range(3):
            connection.request("POST", "/v1/infer", body=json.dumps({"input": [[0, 0, 0, 0]]}))
            response = connection.getresponse()
            assert response.status == 200
            response.read()
    finally:
        connection.close()


def test_server_deep_nesting_400(server, serving):
    body = b"[" * 100_000 + b"]" * 100_000

    status, answer = request(server, "POST", "/v1/infer", body)

    assert status == 400
    assert "too deeply" in answer["error"]


@pytest.mark.parametrize("value", ["NaN", "Infinity"])
def test_server_non_finite_input_400(server, serving, value):
    body = f'{{"input": [[1, 2, 3, {value}]]}}'.encode()

    status, answer = request(server, "POST", "/v1/infer", body)

    assert status == 400
    assert "NaN or infinity" in answer["error"]


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_server_other_methods_405_json(server, method):
    status, answer = request(server, method, "/v1/infer", b"{}")

    assert status == 405
    assert "POST" in answer["error"]


def test_server_chunked_body_411_closes(server, serving):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.putrequest("POST", "/v1/infer")
        connection.putheader("Transfer-Encoding", "chunked")
        connection.endheaders()
        connection.send(b'5\r\n{"a":\r\n0\r\n\r\n')
        response = connection.getresponse()

        assert response.status == 411
        assert response.getheader("Connection") == "close"
    finally:
        connection.close()
