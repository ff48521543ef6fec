"""The MQTT wire protocol shared by the controller, its agents and simulated agents.

Every device has one topic tree under the versioned prefix ``edgefleet/v1``::

    edgefleet/v1/devices/<device_id>/
        register            up    RegisterRequest, QoS 1 (a request: reply below)
        register/reply      down  RegisterResponse, QoS 1
        presence            up    Presence, QoS 1, retained; the agent's birth and will
        telemetry           up    TelemetrySample, QoS 1
        status              up    DeploymentStatus, QoS 1
        commands            down  Command, QoS 1, never retained
        desired             down  Command carrying the desired DeployCommand, QoS 1, retained
        artifacts/request   up    ArtifactRequest for one chunk, QoS 1
        artifacts/chunks    down  ArtifactChunk with its CRC-32, QoS 1

Payloads are the serialized ``edgefleet.v1`` messages. A failed request gets a reply with
an empty payload and the MQTT 5 user properties ``status`` (a gRPC status code name, such
as ``INVALID_ARGUMENT``) and ``message``. Replies carry the request's correlation data.
The controller always replies on the device's own topics, never on a response topic that
the request names, so a device cannot direct replies at another device.

The broker's ACL (``deploy/mosquitto/acl``) lets each device publish only its ``up``
topics and subscribe only its ``down`` topics.
"""

from __future__ import annotations

import dataclasses
import enum
import ssl
import urllib.parse
from pathlib import Path

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgefleet.errors import InvalidInputError
from edgefleet.ids import validate_device_id

__all__ = [
    "DEFAULT_KEEPALIVE_S",
    "DEFAULT_SESSION_EXPIRY_S",
    "DEFAULT_SHARE_GROUP",
    "PREFIX",
    "QOS",
    "BrokerAddress",
    "BrokerSettings",
    "DeviceTopics",
    "TopicKind",
    "device_topic_filter",
    "parse_device_topic",
    "reply_error",
    "reply_properties",
    "request_properties",
    "shared_filter",
]

PREFIX = "edgefleet/v1"
_DEVICES = f"{PREFIX}/devices"

# Every edgefleet message is sent at least once; receivers deduplicate by id or offset.
QOS = 1
# A device that stops sending is shown offline 1.5 x keepalive after its last packet
# (the broker's will timer, MQTT 5 section 3.1.2.10).
DEFAULT_KEEPALIVE_S = 30
# How long the broker keeps an offline agent's session and its queued QoS 1 commands.
DEFAULT_SESSION_EXPIRY_S = 24 * 3600

# Controller replicas subscribe to device messages as one shared-subscription group, so
# the broker hands each message to one of them.
DEFAULT_SHARE_GROUP = "edgefleet-controllers"

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


class TopicKind(enum.StrEnum):
    """The topics of one device's tree, named by their path below the device."""

    REGISTER = "register"
    REGISTER_REPLY = "register/reply"
    PRESENCE = "presence"
    TELEMETRY = "telemetry"
    STATUS = "status"
    COMMANDS = "commands"
    DESIRED = "desired"
    ARTIFACT_REQUEST = "artifacts/request"
    ARTIFACT_CHUNKS = "artifacts/chunks"


@dataclasses.dataclass(frozen=True, slots=True)
class DeviceTopics:
    """The topic names of one device."""

    device_id: str

    def __post_init__(self) -> None:
        validate_device_id(self.device_id)

    def topic(self, kind: TopicKind) -> str:
        return f"{_DEVICES}/{self.device_id}/{kind.value}"


def device_topic_filter(kind: TopicKind) -> str:
    """Return the filter matching ``kind`` of every device, such as ``.../+/telemetry``."""
    return f"{_DEVICES}/+/{kind.value}"


def shared_filter(group: str, topic_filter: str) -> str:
    """Return ``topic_filter`` as a shared subscription of ``group`` (MQTT 5 ``$share``)."""
    if not group or any(char in group for char in "/+#"):
        raise InvalidInputError(
            f"invalid shared subscription group {group!r}: use a name without '/', '+' or '#'"
        )
    return f"$share/{group}/{topic_filter}"


def parse_device_topic(topic: str) -> tuple[str, TopicKind]:
    """Split a device topic into its device id and kind; raises ``InvalidInputError``."""
    prefix = f"{_DEVICES}/"
    if not topic.startswith(prefix):
        raise InvalidInputError(f"topic {topic!r} is not under {prefix}")
    device_id, _, rest = topic[len(prefix) :].partition("/")
    try:
        kind = TopicKind(rest)
    except ValueError:
        raise InvalidInputError(f"topic {topic!r} names no known edgefleet topic") from None
    return validate_device_id(device_id), kind


@dataclasses.dataclass(frozen=True, slots=True)
class BrokerAddress:
    """A broker parsed from ``mqtt://HOST[:PORT]`` or ``mqtts://HOST[:PORT]`` (TLS)."""

    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """Parse a broker URL; raises ``InvalidInputError`` naming what is wrong."""
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in DEFAULT_PORTS:
            raise InvalidInputError(
                f"invalid broker URL {url!r}: expected mqtt://HOST:PORT or mqtts://HOST:PORT"
            )
        if parsed.username or parsed.password:
            raise InvalidInputError(
                f"invalid broker URL {url!r}: pass credentials with the username and "
                "password-file options, not in the URL"
            )
        if parsed.path not in ("", "/") or parsed.query or parsed.fragment:
            raise InvalidInputError(f"invalid broker URL {url!r}: expected no path or query")
        try:
            port = parsed.port or DEFAULT_PORTS[parsed.scheme]
        except ValueError as exc:
            raise InvalidInputError(f"invalid broker URL {url!r}: {exc}") from None
        if not parsed.hostname:
            raise InvalidInputError(f"invalid broker URL {url!r}: the host is missing")
        return cls(host=parsed.hostname, port=port, tls=parsed.scheme == "mqtts")

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"


@dataclasses.dataclass(frozen=True, slots=True)
class BrokerSettings:
    """Where and as whom a client connects: the broker, credentials and TLS trust."""

    address: BrokerAddress
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    ca_file: Path | None = None  # None trusts the system's CA certificates
    keepalive_s: int = DEFAULT_KEEPALIVE_S
    session_expiry_s: int = DEFAULT_SESSION_EXPIRY_S

    def __post_init__(self) -> None:
        if not 1 <= self.keepalive_s <= 65535:
            raise InvalidInputError(f"keepalive must be 1-65535 seconds, got {self.keepalive_s}")
        if not 0 <= self.session_expiry_s <= 0xFFFFFFFF:
            raise InvalidInputError(
                f"session expiry must be 0-4294967295 seconds, got {self.session_expiry_s}"
            )
        if self.ca_file is not None and not self.address.tls:
            raise InvalidInputError("a CA file needs a TLS broker URL (mqtts://)")

    @classmethod
    def from_options(
        cls,
        url: str,
        *,
        username: str | None = None,
        password_file: Path | None = None,
        ca_file: Path | None = None,
        keepalive_s: int = DEFAULT_KEEPALIVE_S,
    ) -> BrokerSettings:
        """Build settings from command-line options, reading the password from its file."""
        password = None
        if password_file is not None:
            try:
                password = password_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise InvalidInputError(
                    f"cannot read password file {password_file}: {exc}"
                ) from exc
        return cls(
            address=BrokerAddress.parse(url),
            username=username,
            password=password,
            ca_file=ca_file,
            keepalive_s=keepalive_s,
        )

    def configure(self, client: object) -> None:
        """Apply credentials and TLS to a ``paho.mqtt.client.Client``."""
        if self.username is not None:
            client.username_pw_set(self.username, self.password)  # type: ignore[attr-defined]
        if self.address.tls:
            context = ssl.create_default_context(
                cafile=str(self.ca_file) if self.ca_file is not None else None
            )
            client.tls_set_context(context)  # type: ignore[attr-defined]


def request_properties(correlation: bytes) -> Properties:
    """Return PUBLISH properties of a request: its correlation data."""
    properties = Properties(PacketTypes.PUBLISH)
    properties.CorrelationData = correlation
    return properties


def reply_properties(
    correlation: bytes | None, *, status: str | None = None, message: str = ""
) -> Properties:
    """Return PUBLISH properties of a reply; ``status`` marks a failed request."""
    properties = Properties(PacketTypes.PUBLISH)
    if correlation:
        properties.CorrelationData = correlation
    if status is not None:
        properties.UserProperty = [("status", status), ("message", message)]
    return properties


def reply_error(properties: Properties | None) -> tuple[str, str] | None:
    """Return the ``(status, message)`` of a failed reply, or None for a successful one."""
    pairs = dict(getattr(properties, "UserProperty", None) or [])
    status = pairs.get("status")
    return None if status is None else (status, pairs.get("message", ""))
