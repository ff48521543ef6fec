"""The demo's transport options, checked before any model is built."""

from __future__ import annotations

from typer.testing import CliRunner

from edgefleet.cli import app
from edgefleet.demo import broker


def test_demo_mqtt_without_mosquitto_explains_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(broker, "SYSTEM_DIRS", ())

    result = CliRunner().invoke(app, ["demo", "--transport", "mqtt"])

    assert result.exit_code == 2
    assert "apt-get install mosquitto" in result.stderr
    assert "--broker mqtt://HOST:PORT" in result.stderr


def test_demo_finds_installed_mosquitto():
    assert broker.find_mosquitto() is not None  # CI installs it, as the MQTT tests need


def test_demo_rejects_unknown_transport():
    result = CliRunner().invoke(app, ["demo", "--transport", "carrier-pigeon"])

    assert result.exit_code == 2
    assert "carrier-pigeon" in result.output


def test_demo_broker_needs_mqtt_transport():
    result = CliRunner().invoke(app, ["demo", "--broker", "mqtt://127.0.0.1:1883"])

    assert result.exit_code == 2
    assert "--transport mqtt" in result.output
