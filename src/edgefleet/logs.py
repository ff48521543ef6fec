"""Log output formats shared by the controller and the agent: text or one JSON object a line.

Only the standard library is used, so the agent gains no dependency. Code that logs about
a device, a deployment or a rollout passes the ids as ``extra``::

    logger.info("sent deployment %s", deployment_id,
                extra={"device_id": device_id, "deployment_id": deployment_id})

The text format shows only the message; the JSON format writes every line as::

    {"time": "2026-01-31T12:00:00.123456+00:00", "level": "INFO", "logger": "edgefleet...",
     "message": "...", "device_id": "pi-01", "deployment_id": "9f2c...", "rollout_id": null}

``device_id``, ``deployment_id`` and ``rollout_id`` are always present (null when the
record names none), so a log pipeline can index them without guessing. An exception adds
``exception`` with the formatted traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum

__all__ = ["CONTEXT_FIELDS", "TEXT_FORMAT", "JsonFormatter", "LogFormat", "configure_logging"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The ids a record may carry as ``extra``; the JSON format always writes them.
CONTEXT_FIELDS = ("device_id", "deployment_id", "rollout_id")


class LogFormat(StrEnum):
    """Format of log lines on stderr."""

    TEXT = "text"
    JSON = "json"


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object on one line; see the module docstring.

    ``defaults`` fill context fields a record does not set: the agent passes its own
    ``device_id``, so every line it writes names the device.
    """

    def __init__(self, *, defaults: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self._defaults = dict(defaults or {})

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in CONTEXT_FIELDS:
            value = getattr(record, field, None)
            entry[field] = value if value is not None else self._defaults.get(field)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # default=str: an id passed as a UUID or an enum still serializes.
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(
    log_format: LogFormat | str,
    *,
    level: int | str | None = None,
    defaults: Mapping[str, str] | None = None,
) -> None:
    """Make the root logger write ``log_format`` lines to stderr.

    Replaces the formatter of every handler already on the root logger (``basicConfig``
    may have run), or adds a stderr handler when there is none. ``level`` is applied when
    given. Raises ``ValueError`` for an unknown format.
    """
    log_format = LogFormat(log_format)
    formatter: logging.Formatter
    if log_format is LogFormat.JSON:
        formatter = JsonFormatter(defaults=defaults)
    else:
        formatter = logging.Formatter(TEXT_FORMAT)
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler(sys.stderr))
    for handler in root.handlers:
        handler.setFormatter(formatter)
    if level is not None:
        root.setLevel(level)
