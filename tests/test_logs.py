"""Log formats of ``edgefleet.logs``: text by default, one JSON object a line on request."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from edgefleet.logs import CONTEXT_FIELDS, JsonFormatter, LogFormat, configure_logging


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO, logging.Handler]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("edgefleet.test_logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream, handler
    logger.removeHandler(handler)
    logger.propagate = True


def test_json_line_has_context_fields(captured) -> None:
    logger, stream, handler = captured
    handler.setFormatter(JsonFormatter())

    logger.info("sent deployment %s", "d-1", extra={"device_id": "pi-01", "deployment_id": "d-1"})

    entry = json.loads(stream.getvalue())
    assert entry["message"] == "sent deployment d-1"
    assert entry["level"] == "INFO"
    assert entry["logger"] == "edgefleet.test_logs"
    assert entry["device_id"] == "pi-01"
    assert entry["deployment_id"] == "d-1"
    assert entry["rollout_id"] is None
    assert entry["time"].endswith("+00:00")


def test_json_defaults_fill_missing_ids(captured) -> None:
    logger, stream, handler = captured
    handler.setFormatter(JsonFormatter(defaults={"device_id": "pi-02"}))

    logger.warning("no ids here")
    logger.warning("other device", extra={"device_id": "pi-03"})

    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["device_id"] == "pi-02"
    assert second["device_id"] == "pi-03"


def test_json_keeps_one_line_per_record(captured) -> None:
    logger, stream, handler = captured
    handler.setFormatter(JsonFormatter())

    try:
        raise ValueError("broken\nsampler")
    except ValueError:
        logger.exception("failed with\ttabs and\nnewlines", extra={"rollout_id": "r-1"})

    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["message"] == "failed with\ttabs and\nnewlines"
    assert "ValueError: broken" in entry["exception"]
    assert entry["rollout_id"] == "r-1"


def test_configure_logging_switches_root_format() -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    stream = io.StringIO()
    root.handlers = [logging.StreamHandler(stream)]
    try:
        configure_logging("json", level=logging.INFO)
        logging.getLogger("edgefleet.x").info("hello", extra={"device_id": "pi-04"})
        configure_logging(LogFormat.TEXT)
        logging.getLogger("edgefleet.x").info("plain")
    finally:
        root.handlers, root.level = saved_handlers, saved_level

    json_line, text_line = stream.getvalue().splitlines()
    assert set(CONTEXT_FIELDS) <= set(json.loads(json_line))
    assert text_line.endswith("INFO edgefleet.x: plain")


def test_configure_logging_rejects_unknown_format() -> None:
    with pytest.raises(ValueError, match="'xml'"):
        configure_logging("xml")
