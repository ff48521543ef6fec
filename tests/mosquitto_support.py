"""A real Mosquitto broker on a free loopback port, for the MQTT tests.

``MosquittoBroker`` writes a configuration into a test's directory, runs
``mosquitto -c FILE`` and waits until the port accepts connections. ``restart`` keeps
the port, so clients that reconnect find the broker again.
"""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

INSTALL_HINT = (
    "mosquitto is not installed, and the MQTT tests need a real broker; install it with "
    "`apt-get update && apt-get install -y mosquitto` (CI does this in .ci/run)"
)
START_TIMEOUT_S = 10.0


def mosquitto_binary() -> str:
    """Return the path of ``mosquitto``; fail the test (never skip) when it is missing."""
    path = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/sbin")
    if path is None:
        pytest.fail(INSTALL_HINT)
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class MosquittoBroker:
    """One ``mosquitto`` process; ``settings`` are extra configuration lines."""

    def __init__(self, directory: Path, *, settings: str = "allow_anonymous true\n") -> None:
        self.binary = mosquitto_binary()
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config_path = directory / "mosquitto.conf"
        self.log_path = directory / "mosquitto.log"
        self.config_path.write_text(
            f"listener {self.port} 127.0.0.1\n"
            # Started as root, mosquitto switches to this user; otherwise it ignores the
            # line. Staying the test's user lets it read files in the test's directory.
            f"user {getpass.getuser()}\n"
            "persistence false\n"
            f"log_dest file {self.log_path}\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            f"{settings}"
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                stderr = (
                    self.process.stderr.read().decode(errors="replace")
                    if self.process.stderr
                    else ""
                )
                pytest.fail(
                    f"mosquitto exited with {self.process.returncode}: {stderr}{self.log()}"
                )
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        pytest.fail(f"mosquitto did not listen on port {self.port} within {START_TIMEOUT_S} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class MqttProbe:
    """A plain paho MQTT 5 client that records what it receives, for driving tests."""

    def __init__(
        self,
        broker: MosquittoBroker,
        client_id: str,
        *,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self._paho = paho
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.messages: list[paho.MQTTMessage] = []
        # Each message with the time.monotonic() it arrived at, in order.
        self.arrivals: list[tuple[float, paho.MQTTMessage]] = []
        self.connack = None
        self.subacks: dict[int, list] = {}
        self.pubacks: dict[int, object] = {}
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", broker.port, keepalive=10)
        self.client.loop_start()
        wait_until(lambda: self.connack is not None, what=f"CONNACK for {client_id}")

    def _on_connect(self, _client, _userdata, _flags, reason_code, _properties) -> None:
        self.connack = reason_code

    def _on_message(self, _client, _userdata, message) -> None:
        self.arrivals.append((time.monotonic(), message))
        self.messages.append(message)

    def _on_subscribe(self, _client, _userdata, mid, reason_codes, _properties) -> None:
        self.subacks[mid] = list(reason_codes)

    def _on_publish(self, _client, _userdata, mid, reason_code, _properties) -> None:
        self.pubacks[mid] = reason_code

    def subscribe(self, topic: str) -> list:
        """Subscribe at QoS 1 and return the SUBACK reason codes."""
        _result, mid = self.client.subscribe(topic, qos=1)
        wait_until(lambda: mid in self.subacks, what=f"SUBACK for {topic}")
        return self.subacks[mid]

    def publish(self, topic: str, payload: bytes, *, retain: bool = False, properties=None):
        """Publish at QoS 1 and return the PUBACK reason code."""
        info = self.client.publish(topic, payload, qos=1, retain=retain, properties=properties)
        wait_until(lambda: info.mid in self.pubacks, what=f"PUBACK for {topic}")
        return self.pubacks[info.mid]

    def received(self, topic: str) -> list:
        return [message for message in list(self.messages) if message.topic == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_until(condition, *, timeout_s: float = 10.0, what: str = "") -> object:
    """Poll ``condition`` every 20 ms until it is truthy; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what or condition}")
