from __future__ import annotations

import pytest

from edgefleet.controller.errors import InvalidRolloutError
from edgefleet.controller.rollout_spec import (
    DEFAULT_WAVES,
    GateConfig,
    Target,
    TargetKind,
    Wave,
    parse_waves,
    wave_sizes,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("all", Target(TargetKind.ALL)),
        ("profile:raspberry-pi-4b", Target(TargetKind.PROFILE, profile="raspberry-pi-4b")),
        ("devices:pi-1, pi-2", Target(TargetKind.DEVICES, device_ids=("pi-1", "pi-2"))),
    ],
)
def test_target_parse_round_trip(text, expected):
    target = Target.parse(text)

    assert target == expected
    assert Target.parse(target.describe()) == target
    assert Target.from_mapping(target.to_dict()) == target


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("everything", "use 'all', 'profile:NAME' or 'devices:ID,ID,...'"),
        ("profile:", "needs a profile name"),
        ("devices:", "lists no devices"),
        ("devices:a,a", "lists device.s. a more than once"),
        ("devices:bad/id", "invalid device id in the target"),
    ],
)
def test_target_parse_rejects(text, message):
    with pytest.raises(InvalidRolloutError, match=message):
        Target.parse(text)


def test_target_from_mapping_rejects_kind():
    with pytest.raises(InvalidRolloutError, match="invalid rollout target kind 'some'"):
        Target.from_mapping({"kind": "some"})


@pytest.mark.parametrize(
    ("waves", "total", "sizes"),
    [
        (DEFAULT_WAVES, 1, [1]),
        (DEFAULT_WAVES, 4, [1, 3]),
        (DEFAULT_WAVES, 8, [1, 1, 6]),
        (DEFAULT_WAVES, 100, [1, 24, 75]),
        (parse_waves("5%,25%,100%"), 10, [1, 2, 7]),
        (parse_waves("2,100%"), 1, [1]),
        (parse_waves("100%"), 3, [3]),
    ],
)
def test_wave_sizes_add_up(waves, total, sizes):
    assert wave_sizes(waves, total) == sizes
    assert sum(sizes) == total


def test_wave_parse_forms():
    assert Wave.parse("25%") == Wave(percent=25.0)
    assert Wave.parse(" 3 ") == Wave(count=3)
    assert Wave.parse(2) == Wave(count=2)
    assert Wave(percent=12.5).describe() == "12.5%"
    assert parse_waves(["1", 5, "100%"]) == (Wave(count=1), Wave(count=5), Wave(percent=100.0))


def test_wave_percent_rounds_up():
    # 5 % of 30 devices is 1.5 devices: the wave covers 2, never a fraction.
    assert Wave(percent=5.0).size(30) == 2
    assert Wave(percent=1.0).size(10) == 1
    assert Wave(count=50).size(10) == 10


def test_gate_config_from_mapping():
    gates = GateConfig.from_mapping({"soak_s": 30, "max_failure_rate": 0.1})

    assert gates.soak_s == 30
    assert gates.max_failure_rate == 0.1
    assert GateConfig.from_mapping(gates.to_dict()) == gates


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_failure_rate": 1.0}, "max_failure_rate must be a number from 0"),
        ({"max_failure_rate": -0.1}, "max_failure_rate must be a number from 0"),
        ({"max_p95_regression": float("nan")}, "max_p95_regression must be a number >= 0"),
        ({"soak_s": -1}, "soak_s must be a number from 0 to 86400"),
        ({"soak_s": 1e300}, r"soak_s must be a number from 0 to 86400 \(a day\), got 1e\+300"),
        ({"soak_s": 86_401}, "soak_s must be a number from 0 to 86400"),
        ({"baseline_s": 1e12}, r"baseline_s must be .* at most 86400 \(a day\)"),
        ({"deploy_timeout_s": 0}, "deploy_timeout_s must be a positive number"),
        ({"deploy_timeout_s": 604_801}, r"deploy_timeout_s .* at most 604800 \(a week\)"),
        ({"min_samples": 0}, "min_samples must be an integer from 1"),
        ({"min_samples": True}, "min_samples must be an integer from 1"),
        ({"min_samples": 10**9}, "min_samples must be an integer from 1 to 100000"),
        ({"soak": 1}, "unknown gate setting.s. soak"),
    ],
)
def test_gate_config_rejects(fields, message):
    with pytest.raises(InvalidRolloutError, match=message):
        GateConfig.from_mapping(fields)


def test_gate_config_accepts_its_upper_bounds():
    gates = GateConfig(soak_s=86_400, baseline_s=86_400, deploy_timeout_s=604_800)

    assert gates.deploy_timeout_s == 604_800


@pytest.mark.parametrize(
    ("waves", "message"),
    [
        ("1,,100%", r"wave 2 of '1,,100%' is empty"),
        ("1,100%,", r"wave 3 of '1,100%,' is empty"),
        ("100%,1", "waves must increase, but 1 follows 100%"),
        ("1,100%,50%", "waves must increase, but 50% follows 100%"),
    ],
)
def test_parse_waves_rejects_empty_and_decreasing(waves, message):
    with pytest.raises(InvalidRolloutError, match=message):
        parse_waves(waves)
