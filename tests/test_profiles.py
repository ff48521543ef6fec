from pathlib import Path

import pytest

from edgefleet.errors import ProfileError
from edgefleet.profiles import CpuArch, DeviceProfile, load_profile, parse_profile

PROFILE_DIR = Path(__file__).resolve().parents[1] / "deploy" / "profiles"
SHIPPED = sorted(PROFILE_DIR.rglob("*.toml"))

VALID = {
    "name": "test-board",
    "cpu_arch": "aarch64",
    "cpu_cores": 4,
    "cpu_flags": ["neon", "asimd"],
    "memory_mb": 1024,
    "model_memory_budget_mb": 128,
    "latency_budget_ms": 20.0,
}


def test_shipped_profiles_cover_reference_boards():
    names = {load_profile(path).name for path in SHIPPED}
    assert {"raspberry-pi-zero-2w", "raspberry-pi-4b", "raspberry-pi-5", "x86-gateway"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_profile_loads_and_round_trips(path):
    profile = load_profile(path)

    assert profile.name == path.stem
    assert DeviceProfile.from_proto(profile.to_proto()) == profile
    assert parse_profile(profile.to_dict()) == profile


def test_inference_threads_default_to_cores():
    profile = parse_profile(VALID)

    assert profile.inference_threads == 4
    assert profile.cpu_arch is CpuArch.AARCH64


def test_fingerprint_ignores_name_only():
    base = parse_profile(VALID)
    renamed = parse_profile({**VALID, "name": "other-board"})
    tighter = parse_profile({**VALID, "latency_budget_ms": 10.0})

    assert base.fingerprint == renamed.fingerprint
    assert base.fingerprint != tighter.fingerprint


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"latency_budget_ms": -5.0}, "latency_budget_ms"),
        ({"latency_budget_ms": float("nan")}, "latency_budget_ms"),
        ({"model_memory_budget_mb": 0}, "model_memory_budget_mb"),
        ({"model_memory_budget_mb": 4096}, "model_memory_budget_mb"),
        ({"cpu_cores": True}, "cpu_cores"),
        ({"cpu_arch": "mips"}, "cpu_arch"),
        ({"cpu_flags": ["neon", "avx9000"]}, "cpu_flags"),
        ({"cpu_flags": "neon"}, "cpu_flags"),
        ({"memory_gb": 4}, "memory_gb"),
        ({"onnxruntime_version": "latest"}, "onnxruntime_version"),
        ({"inference_threads": 8}, "inference_threads"),
        ({"name": "Bad Name!"}, "name"),
        ({"cpu_cores": 4_000_000_000}, "cpu_cores"),
        ({"memory_mb": 2**40}, "memory_mb"),
        ({"latency_budget_ms": 1e12}, "latency_budget_ms"),
    ],
)
def test_invalid_field_rejected_by_name(change, field):
    with pytest.raises(ProfileError, match=field):
        parse_profile({**VALID, **change})


@pytest.mark.parametrize("missing", ["latency_budget_ms", "model_memory_budget_mb", "cpu_arch"])
def test_missing_field_rejected_by_name(missing):
    data = {key: value for key, value in VALID.items() if key != missing}

    with pytest.raises(ProfileError, match=f"missing required field.*{missing}"):
        parse_profile(data)


def test_profile_file_errors_name_the_file(tmp_path):
    broken = tmp_path / "broken.toml"
    broken.write_text("name = [unclosed\n")

    with pytest.raises(ProfileError, match="not valid TOML"):
        load_profile(broken)
    with pytest.raises(ProfileError, match="not found"):
        load_profile(tmp_path / "absent.toml")


def test_proto_with_unset_arch_rejected():
    message = parse_profile(VALID).to_proto()
    message.cpu_arch = 0

    with pytest.raises(ProfileError, match="cpu_arch"):
        DeviceProfile.from_proto(message)
