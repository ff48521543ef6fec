"""Message size and keepalive limits shared by the gRPC server and its clients.

Every message stays under ``MAX_MESSAGE_BYTES``: artifacts of any size travel as a stream
of ``ARTIFACT_CHUNK_BYTES`` chunks, so the 4 MiB gRPC default never needs raising and an
oversized message from a misbehaving peer is rejected by gRPC itself.
"""

from __future__ import annotations

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
ARTIFACT_CHUNK_BYTES = 1024 * 1024

# Keepalive pings every 20 s detect a half-open connection (a device that lost power, a
# NAT that dropped the mapping) within about 30 s. The server must permit pings at that
# rate and without active calls, or it responds with GOAWAY "too_many_pings".
KEEPALIVE_TIME_MS = 20_000
KEEPALIVE_TIMEOUT_MS = 10_000

CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    # Measured with grpcio 1.85 on a connection whose peer stopped responding. Without this the
    # unanswered ping times out after gRPC's default of 60 s, whatever the value of
    # keepalive_timeout_ms (benchmarks/resilience_bench.py, tests/agent/test_agent_faults.py).
    ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)

SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    *CHANNEL_OPTIONS,
    # gRPC sets SO_REUSEPORT by default, so a second controller on the same port would bind
    # and the kernel would split devices between two controllers with separate databases.
    ("grpc.so_reuseport", 0),
    ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_TIME_MS // 2),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", KEEPALIVE_TIME_MS // 2),
)
