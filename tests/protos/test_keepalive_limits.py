"""The gRPC keepalive settings of the agent's channel and the controller's server agree."""

from __future__ import annotations

from edgefleet.protos import limits
from edgefleet.protos.mqtt import DEFAULT_KEEPALIVE_S


def test_client_pings_no_faster_than_server_permits():
    client = dict(limits.CHANNEL_OPTIONS)
    server = dict(limits.SERVER_OPTIONS)

    # A client that pings faster than the server allows gets GOAWAY "too_many_pings".
    assert (
        client["grpc.keepalive_time_ms"] >= server["grpc.http2.min_ping_interval_without_data_ms"]
    )
    assert (
        client["grpc.keepalive_time_ms"]
        >= server["grpc.http2.min_recv_ping_interval_without_data_ms"]
    )


def test_keepalive_runs_without_calls_on_both_ends():
    client = dict(limits.CHANNEL_OPTIONS)
    server = dict(limits.SERVER_OPTIONS)

    assert client["grpc.keepalive_permit_without_calls"] == 1
    assert server["grpc.keepalive_permit_without_calls"] == 1
    assert client["grpc.http2.max_pings_without_data"] == 0


def test_unanswered_ping_times_out_at_keepalive_timeout():
    client = dict(limits.CHANNEL_OPTIONS)

    # gRPC's own ping timeout (60 s) would otherwise decide when a half-open link is noticed.
    assert client["grpc.http2.ping_timeout_ms"] == limits.KEEPALIVE_TIMEOUT_MS


def test_half_open_connection_detected_within_a_minute():
    grpc_detection_s = (limits.KEEPALIVE_TIME_MS + limits.KEEPALIVE_TIMEOUT_MS) / 1000
    # The broker drops a silent MQTT client after 1.5 x keepalive (MQTT 3.1.1, 3.1.2.10).
    mqtt_detection_s = 1.5 * DEFAULT_KEEPALIVE_S

    assert grpc_detection_s <= 60
    assert mqtt_detection_s <= 60
