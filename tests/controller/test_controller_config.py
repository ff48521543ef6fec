from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.controller.config import ControllerConfig, load_config
from edgefleet.controller.errors import ConfigError


def test_load_config_reads_both_sections(tmp_path: Path) -> None:
    path = tmp_path / "controller.toml"
    path.write_text(
        "[controller]\ntelemetry_interval_s = 2.5\ngrpc_max_workers = 128\n"
        "[policy]\nbreach_samples = 5\ncooldown_s = 60\n"
    )

    config = load_config(path)

    assert config.telemetry_interval_s == 2.5
    assert config.grpc_max_workers == 128
    assert config.policy.breach_samples == 5
    assert config.policy.cooldown_s == 60
    assert config.policy.headroom_samples == 30  # default


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[controler]\n", "controler"),
        ("[controller]\nretention = 5\n", "retention"),
        ("[policy]\nheadroom_ratio = 2.0\n", "headroom_ratio"),
        ("[controller]\ntelemetry_interval_s = 0\n", "telemetry_interval_s"),
        ("[controller]\ntelemetry_interval_s = 1e-300\n", "from 0.01 to 86400"),
        ("[controller]\ncertificate_validity_days = 10000000\n", "from 1 to 3650"),
        ("[controller]\nmanifest_ttl_s = 1\n", "manifest_ttl_s must be from 60"),
        ("[controller]\nhost_calibration_duration_s = 1e-9\n", "host_calibration_duration_s"),
        ("[controller]\nshutdown_grace_s = 1e12\n", "shutdown_grace_s must be from 0 to 3600"),
        ("[controller\n", "not valid TOML"),
        ("presence_timeout_s = 10\n", r"presence_timeout_s must be under \[controller\]"),
        ("cooldown_s = 5\n", r"cooldown_s must be under \[policy\]"),
    ],
)
def test_load_config_rejects_invalid_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "controller.toml"
    path.write_text(text)

    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_load_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")


def test_default_config_is_valid() -> None:
    config = ControllerConfig()

    assert config.policy.window == 30
