"""Controller configuration, loaded from a TOML file (``serve --config FILE``).

::

    [controller]
    telemetry_interval_s = 1.0          # interval agents send samples at (0.01 to 86400)
    telemetry_retention_s = 604800      # samples older than this are deleted (7 days)
    retention_check_interval_s = 300    # how often the deletion runs
    grpc_max_workers = 64               # threads running controller calls for gRPC requests
    connect_rate_per_s = 100.0          # registrations admitted per second (token bucket)
    connect_burst = 100                 # registrations admitted at once before the rate applies
    telemetry_queue_max = 20000         # samples waiting for storage before senders are slowed
    mqtt_session_expiry_s = 600         # broker keeps a stopped controller's MQTT session this long
    shutdown_grace_s = 5.0              # time open RPCs get to finish on shutdown (0 to 3600)
    host_calibration_duration_s = 2.0   # how long the host runs the reference model (0.01 to 600)
    rollout_check_interval_s = 1.0      # how often rollouts check deployments and gates
    manifest_ttl_s = 604800             # manifests expire this long after sending (60 s to 365 d)
    certificate_validity_days = 365     # lifetime of an enrolled device's certificate (1 to 3650)
    revocation_check_interval_s = 2.0   # how often open sessions are checked for revocation
    presence_timeout_s = 30.0           # a connected device silent this long shows offline (0: off)
    redeploy_initial_s = 30.0           # wait before a failed deployment is sent again
    redeploy_max_s = 600.0              # the wait doubles after each failure up to this
    redeploy_max_attempts = 5           # deployments of one variant to one device, first included
    http_auth = "token"                 # "token": API tokens on the HTTP API; "none": loopback only

    [policy]
    breach_samples = 3
    memory_margin_mb = 64.0
    headroom_ratio = 0.5
    headroom_samples = 30
    cooldown_s = 20.0
    min_requests = 1

Every key is optional; unknown keys and sections are rejected so that a typo is not
silently ignored.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgefleet.controller.errors import ConfigError
from edgefleet.controller.policy import PolicyConfig

# The largest MQTT 5 Session Expiry Interval, a four-byte integer.
MAX_SESSION_EXPIRY_S = 0xFFFFFFFF
# A week: a device silent for longer is offline by any reading.
MAX_PRESENCE_TIMEOUT_S = 7 * 24 * 3600.0
# Ranges of settings whose extremes break the controller or the fleet: samples faster than
# 100 a second, a certificate that ends after the year 9999 (x509 and datetime stop there),
# a manifest that expires before a device can fetch it. Checked after the type checks.
_RANGES: dict[str, tuple[float, float]] = {
    "telemetry_interval_s": (0.01, 86400.0),
    "host_calibration_duration_s": (0.01, 600.0),
    "manifest_ttl_s": (60.0, 365 * 24 * 3600.0),
    "certificate_validity_days": (1.0, 3650.0),
    "shutdown_grace_s": (0.0, 3600.0),
}

# Values of ``http_auth``, as in ``edgefleet.controller.api.auth.HttpAuth``, which this
# module does not import so that loading a config needs no FastAPI.
_HTTP_AUTH_MODES = ("token", "none")

__all__ = ["ControllerConfig", "load_config"]


@dataclasses.dataclass(frozen=True, slots=True)
class ControllerConfig:
    """Settings of one controller process; see the module docstring for the TOML form."""

    telemetry_interval_s: float = 1.0
    telemetry_retention_s: float = 7 * 24 * 3600.0
    retention_check_interval_s: float = 300.0
    # The gRPC server runs on asyncio, so an open Session stream occupies no thread. These
    # threads run the blocking controller calls (database, artifact reads) of requests.
    grpc_max_workers: int = 64
    # A token bucket over registrations on every transport. After a broker or network
    # outage the whole fleet reconnects at once; the rest get RESOURCE_EXHAUSTED and
    # retry with their backoff.
    connect_rate_per_s: float = 100.0
    connect_burst: int = 100
    # Bound of the queue between the endpoints and the batched telemetry writer. A full
    # queue blocks the endpoint (MQTT stops reading the broker's socket, a gRPC stream
    # stops reading its messages), so a burst is slowed down instead of dropped.
    telemetry_queue_max: int = 20_000
    # The broker keeps the controller's MQTT session this long after it disconnects, and
    # queues device messages for it up to its max_queued_messages, so a restart loses none.
    mqtt_session_expiry_s: int = 600
    shutdown_grace_s: float = 5.0
    host_calibration_duration_s: float = 2.0
    # Device reports wake the rollout engine at once; this bounds how late a soak ends.
    rollout_check_interval_s: float = 1.0
    # A manifest is signed again each time it is sent, so this bounds how long a captured
    # manifest can be replayed, and how long a device may take to act on a command.
    manifest_ttl_s: float = 7 * 24 * 3600.0
    certificate_validity_days: float = 365.0
    # Revocations made by another process (``edgefleet controller revoke``) reach open
    # sessions within this interval.
    revocation_check_interval_s: float = 2.0
    # A device whose session is open but that sends nothing (no telemetry, status or
    # presence) for this long is shown offline until it is heard from again. It catches
    # what no transport reports: a broker restart sends no will messages. 0 turns it off;
    # otherwise it must cover three telemetry intervals.
    presence_timeout_s: float = 30.0
    # Backoff of deployments sent again after a transfer or install failure.
    redeploy_initial_s: float = 30.0
    redeploy_max_s: float = 600.0
    redeploy_max_attempts: int = 5
    # "token" requires a bearer token on the HTTP API and /metrics; "none" turns that off,
    # and ``edgefleet controller serve`` accepts it only with a loopback --http-host.
    http_auth: str = "token"
    policy: PolicyConfig = dataclasses.field(default_factory=PolicyConfig)

    def __post_init__(self) -> None:
        for name in (
            "telemetry_interval_s",
            "telemetry_retention_s",
            "retention_check_interval_s",
            "host_calibration_duration_s",
            "rollout_check_interval_s",
            "connect_rate_per_s",
            "manifest_ttl_s",
            "certificate_validity_days",
            "revocation_check_interval_s",
            "redeploy_initial_s",
            "redeploy_max_s",
        ):
            _require_positive(name, getattr(self, name))
        integers = (
            ("connect_burst", 1),
            ("telemetry_queue_max", 100),
            ("mqtt_session_expiry_s", 0),
            ("redeploy_max_attempts", 1),
        )
        for name, minimum in integers:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(
                    f"controller.{name} must be an integer >= {minimum}, got {value!r}"
                )
        if not _is_number(self.shutdown_grace_s) or self.shutdown_grace_s < 0:
            raise ConfigError(
                f"controller.shutdown_grace_s must be a number >= 0, got {self.shutdown_grace_s!r}"
            )
        if self.mqtt_session_expiry_s > MAX_SESSION_EXPIRY_S:
            raise ConfigError(
                f"controller.mqtt_session_expiry_s must be at most {MAX_SESSION_EXPIRY_S}, "
                f"got {self.mqtt_session_expiry_s}"
            )
        workers = self.grpc_max_workers
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 4:
            raise ConfigError(
                f"controller.grpc_max_workers must be an integer >= 4, got {workers!r}"
            )
        timeout = self.presence_timeout_s
        if not _is_number(timeout) or not 0 <= timeout <= MAX_PRESENCE_TIMEOUT_S:
            raise ConfigError(
                "controller.presence_timeout_s must be a number from 0 (0 turns the check "
                f"off) to {MAX_PRESENCE_TIMEOUT_S:g}, got {self.presence_timeout_s!r}"
            )
        if 0 < self.presence_timeout_s < 3 * self.telemetry_interval_s:
            raise ConfigError(
                f"controller.presence_timeout_s ({self.presence_timeout_s!r}) must cover three "
                f"telemetry intervals ({3 * self.telemetry_interval_s:g} s with "
                f"telemetry_interval_s = {self.telemetry_interval_s!r}); raise it, or set 0 "
                "to turn the check off"
            )
        for name, (low, high) in _RANGES.items():
            value = getattr(self, name)
            if not low <= value <= high:
                raise ConfigError(
                    f"controller.{name} must be from {low:g} to {high:g}, got {value!r}"
                )
        if self.http_auth not in _HTTP_AUTH_MODES:
            raise ConfigError(
                f"controller.http_auth must be one of {', '.join(map(repr, _HTTP_AUTH_MODES))}, "
                f'got {self.http_auth!r}; use "token" unless the API serves only loopback'
            )
        if self.redeploy_max_s < self.redeploy_initial_s:
            raise ConfigError(
                f"controller.redeploy_max_s ({self.redeploy_max_s!r}) must be at least "
                f"controller.redeploy_initial_s ({self.redeploy_initial_s!r})"
            )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ControllerConfig:
        """Build a config from parsed TOML; raises ``ConfigError`` naming the bad key."""
        unknown_sections = sorted(set(data) - {"controller", "policy"})
        controller_keys = {field.name for field in dataclasses.fields(cls)} - {"policy"}
        misplaced = [name for name in unknown_sections if name in controller_keys]
        if misplaced:
            raise ConfigError(
                f"key(s) {', '.join(misplaced)} must be under [controller]; add the line "
                "[controller] above them"
            )
        policy_keys = {field.name for field in dataclasses.fields(PolicyConfig)}
        misplaced = [name for name in unknown_sections if name in policy_keys]
        if misplaced:
            raise ConfigError(
                f"key(s) {', '.join(misplaced)} must be under [policy]; add the line [policy] "
                "above them"
            )
        if unknown_sections:
            raise ConfigError(
                f"unknown section(s) {', '.join(unknown_sections)}; "
                "allowed sections are [controller] and [policy]"
            )
        controller = _table(data, "controller")
        known = {field.name for field in dataclasses.fields(cls)} - {"policy"}
        unknown = sorted(set(controller) - known)
        if unknown:
            raise ConfigError(
                f"unknown key(s) in [controller]: {', '.join(unknown)}; "
                f"allowed keys are {', '.join(sorted(known))}"
            )
        policy = PolicyConfig.from_mapping(_table(data, "policy"))
        return cls(**controller, policy=policy)


def load_config(path: str | Path) -> ControllerConfig:
    """Read and validate a controller TOML file; raises ``ConfigError``."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    try:
        return ControllerConfig.from_mapping(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _table(data: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    table = data.get(name, {})
    if not isinstance(table, Mapping):
        raise ConfigError(f"[{name}] must be a table, got {table!r}")
    return table


def _require_positive(name: str, value: object) -> None:
    if not _is_number(value) or not math.isfinite(value) or value <= 0:  # type: ignore[arg-type]
        raise ConfigError(f"controller.{name} must be a positive number, got {value!r}")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
