"""The token bucket that limits new connections, and the rate-limited log."""

from __future__ import annotations

import logging

import pytest

from edgefleet.controller.ratelimit import ThrottledLog, TokenBucket
from edgefleet.errors import InvalidInputError


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_bucket_admits_burst_then_rate():
    clock = FakeClock()
    bucket = TokenBucket(10.0, 5, clock=clock)

    admitted_at_once = sum(bucket.try_acquire() for _ in range(20))
    clock.now = 1.0
    admitted_next_second = sum(bucket.try_acquire() for _ in range(20))

    assert admitted_at_once == 5
    assert admitted_next_second == 5  # refills to the burst, never beyond it
    assert bucket.admitted == 10
    assert bucket.rejected == 30


def test_bucket_refills_at_rate():
    clock = FakeClock()
    bucket = TokenBucket(4.0, 1, clock=clock)
    assert bucket.try_acquire()
    assert not bucket.try_acquire()

    clock.now = 0.2
    assert not bucket.try_acquire()  # 0.8 tokens
    clock.now = 0.25
    assert bucket.try_acquire()


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (float("nan"), 1), (1.0, 0)])
def test_bucket_rejects_invalid_settings(rate, burst):
    with pytest.raises(InvalidInputError):
        TokenBucket(rate, burst)


def test_throttled_log_counts_lines_left_out(caplog):
    clock = FakeClock()
    log = ThrottledLog(logging.getLogger("edgefleet.test.throttled"), window_s=60.0, clock=clock)
    caplog.set_level(logging.WARNING, logger="edgefleet.test.throttled")

    logged = [log.log(("dev-1", "status"), "drop %d", n) for n in range(5)]
    other_key = log.log(("dev-1", "presence"), "drop presence")
    clock.now = 59.0
    inside_window = log.log(("dev-1", "status"), "drop late")
    clock.now = 61.0
    after_window = log.log(("dev-1", "status"), "drop after")

    assert logged == [True, False, False, False, False]
    assert other_key
    assert not inside_window
    assert after_window
    assert [record.getMessage() for record in caplog.records] == [
        "drop 0",
        "drop presence",
        "drop after (5 more like it since the last one, not logged)",
    ]
