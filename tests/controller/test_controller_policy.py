from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
from controller_support import make_record

from edgefleet.controller.errors import ConfigError
from edgefleet.controller.policy import (
    DeviceView,
    PolicyAction,
    PolicyConfig,
    Rung,
    evaluate,
)
from edgefleet.controller.telemetry import TelemetryRecord

LADDER = (Rung("v0", 10.0, 60.0), Rung("v1", 5.0, 40.0), Rung("v2", 2.0, 20.0))
CONFIG = PolicyConfig(
    breach_samples=3, memory_margin_mb=64.0, headroom_ratio=0.5, headroom_samples=4,
    cooldown_s=20.0,
)  # fmt: skip
BUDGET_MS = 20.0
T0 = 1_700_000_000.0


def _samples(
    p95s: Sequence[float | None], *, variant_id: str = "v1", **fields: float
) -> list[TelemetryRecord]:
    """One sample a second; None is an idle sample (no requests)."""
    samples = []
    for index, p95 in enumerate(p95s):
        if p95 is None:
            samples.append(
                make_record(at=T0 + index, p95_ms=0.0, requests=0, variant_id=variant_id, **fields)
            )
        else:
            samples.append(make_record(at=T0 + index, p95_ms=p95, variant_id=variant_id, **fields))
    return samples


def _view(current: str = "v1", **fields: object) -> DeviceView:
    return DeviceView(
        device_id="dev-1",
        latency_budget_ms=BUDGET_MS,
        current_variant_id=current,
        ladder=LADDER,
        **fields,  # type: ignore[arg-type]
    )


def _now(samples: Sequence[TelemetryRecord]) -> datetime:
    return samples[-1].received_at if samples else datetime.fromtimestamp(T0, UTC)


@pytest.mark.parametrize(
    ("p95s", "expected"),
    [
        ([25, 25], PolicyAction.NONE),  # two breaches: not yet
        ([25, 25, 25], PolicyAction.STEP_DOWN),
        ([25, 25, 10, 25, 25], PolicyAction.NONE),  # a good sample breaks the run
        ([25, None, 25, None, 25], PolicyAction.STEP_DOWN),  # idle samples are skipped
        ([10, 25, 25, 25], PolicyAction.STEP_DOWN),
        ([20, 20, 20], PolicyAction.NONE),  # at the budget is within it
    ],
)
def test_latency_breach_needs_consecutive_samples(
    p95s: list[float | None], expected: PolicyAction
) -> None:
    samples = _samples(p95s)

    decision = evaluate(CONFIG, _view(), samples, now=_now(samples))

    assert decision.action is expected
    if expected is PolicyAction.STEP_DOWN:
        assert decision.target_variant_id == "v2"
        assert len(decision.evidence) == 3
        assert "latency breach" in decision.reason


def test_memory_pressure_steps_down() -> None:
    samples = _samples([5, 5, 5], variant_id="v0", memory_available_mb=30.0)

    decision = evaluate(CONFIG, _view(current="v0"), samples, now=_now(samples))

    assert decision.action is PolicyAction.STEP_DOWN
    assert decision.target_variant_id == "v1"
    assert "memory pressure" in decision.reason


def test_memory_pressure_includes_model_need() -> None:
    # 100 MiB available is over the 64 MiB margin but under v0's 60 MiB plus the margin.
    samples = _samples([5, 5, 5], variant_id="v0", memory_available_mb=100.0)

    decision = evaluate(CONFIG, _view(current="v0"), samples, now=_now(samples))

    assert decision.action is PolicyAction.STEP_DOWN
    assert "60 MiB plus the 64 MiB margin" in decision.reason


def test_memory_pressure_counts_idle_samples() -> None:
    samples = _samples([None, None, None], variant_id="v0", memory_available_mb=30.0)

    decision = evaluate(CONFIG, _view(current="v0"), samples, now=_now(samples))

    assert decision.action is PolicyAction.STEP_DOWN


def test_exhausted_ladder_asks_for_recompression() -> None:
    samples = _samples([30, 30, 30], variant_id="v2")

    decision = evaluate(CONFIG, _view(current="v2"), samples, now=_now(samples))

    assert decision.action is PolicyAction.RECOMPRESS
    assert decision.target_variant_id is None
    assert "ladder exhausted" in decision.reason


def test_running_recompression_raises_alert_only() -> None:
    samples = _samples([30, 30, 30], variant_id="v2")
    view = _view(current="v2", recompress_in_flight=True)

    decision = evaluate(CONFIG, view, samples, now=_now(samples))

    assert decision.action is PolicyAction.NONE
    assert decision.alert is True


@pytest.mark.parametrize(
    ("p95s", "memory_mb", "expected"),
    [
        ([5, 5, 5, 5], 500.0, PolicyAction.STEP_UP),
        ([5, 5, 5], 500.0, PolicyAction.NONE),  # not sustained long enough
        ([5, 5, 11, 5], 500.0, PolicyAction.NONE),  # 11 ms > 0.5 * 20 ms
        ([5, None, 5, 5, 5], 500.0, PolicyAction.STEP_UP),
        ([5, 5, 5, 5], 120.0, PolicyAction.NONE),  # after the step 100 MiB < 60 + 64 MiB
    ],
)
def test_step_up_after_sustained_headroom(
    p95s: list[float | None], memory_mb: float, expected: PolicyAction
) -> None:
    samples = _samples(p95s, memory_available_mb=memory_mb)

    decision = evaluate(CONFIG, _view(), samples, now=_now(samples))

    assert decision.action is expected
    if expected is PolicyAction.STEP_UP:
        assert decision.target_variant_id == "v0"


def test_top_rung_never_steps_up() -> None:
    samples = _samples([1, 1, 1, 1], variant_id="v0")

    decision = evaluate(CONFIG, _view(current="v0"), samples, now=_now(samples))

    assert decision.action is PolicyAction.NONE


def test_cooldown_blocks_action_then_allows_it() -> None:
    samples = _samples([25] * 6)
    last_action = samples[1].received_at  # samples 2..5 arrived after it
    view = _view(last_action_at=last_action)

    during = evaluate(CONFIG, view, samples[:5], now=samples[4].received_at)
    after = evaluate(CONFIG, view, samples, now=datetime.fromtimestamp(T0 + 60, UTC))

    assert during.action is PolicyAction.NONE
    assert "cooldown" in during.reason
    assert after.action is PolicyAction.STEP_DOWN


def test_samples_before_last_action_do_not_count() -> None:
    samples = _samples([25, 25, 25, 25])
    view = _view(last_action_at=samples[1].received_at)

    decision = evaluate(CONFIG, view, samples, now=datetime.fromtimestamp(T0 + 600, UTC))

    assert decision.action is PolicyAction.NONE


def test_breach_then_headroom_sequence_does_not_flap() -> None:
    """Replay a step down, then good samples: no step up until the headroom run is complete."""
    config = PolicyConfig(breach_samples=3, headroom_samples=4, cooldown_s=20.0)
    history = _samples([25, 25, 25])
    first = evaluate(config, _view(), history, now=_now(history))
    assert first.action is PolicyAction.STEP_DOWN

    acted_at = history[-1].received_at
    actions = []
    for offset in range(1, 30):
        sample = make_record(at=acted_at.timestamp() + offset, p95_ms=3.0, variant_id="v2")
        history.append(sample)
        view = _view(current="v2", last_action_at=acted_at)
        actions.append(evaluate(config, view, history, now=sample.received_at).action)

    # Headroom from the 4th sample on, but the cooldown blocks steps until 20 s have passed.
    assert PolicyAction.STEP_UP not in actions[:19]
    assert actions[19] is PolicyAction.STEP_UP


@pytest.mark.parametrize("flag", ["pinned", "deployment_in_flight"])
def test_blocked_device_is_not_moved(flag: str) -> None:
    samples = _samples([25, 25, 25])

    decision = evaluate(CONFIG, _view(**{flag: True}), samples, now=_now(samples))

    assert decision.action is PolicyAction.NONE
    assert decision.alert is (flag == "pinned")


def test_samples_of_other_variant_are_ignored() -> None:
    samples = _samples([25, 25, 25], variant_id="v0")

    decision = evaluate(CONFIG, _view(current="v1"), samples, now=_now(samples))

    assert decision.action is PolicyAction.NONE


def test_unknown_current_variant_takes_no_action() -> None:
    samples = _samples([25, 25, 25], variant_id="zz")

    decision = evaluate(CONFIG, _view(current="zz"), samples, now=_now(samples))

    assert decision.action is PolicyAction.NONE


@pytest.mark.parametrize(
    ("fields", "key"),
    [
        ({"breach_samples": 0}, "breach_samples"),
        ({"headroom_ratio": 1.0}, "headroom_ratio"),
        ({"cooldown_s": -1}, "cooldown_s"),
        ({"memory_margin_mb": float("nan")}, "memory_margin_mb"),
        ({"headroom_samples": True}, "headroom_samples"),
    ],
)
def test_policy_config_invalid_values(fields: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        PolicyConfig(**fields)  # type: ignore[arg-type]


def test_policy_config_rejects_unknown_key() -> None:
    with pytest.raises(ConfigError, match="breach_sample"):
        PolicyConfig.from_mapping({"breach_sample": 3})
