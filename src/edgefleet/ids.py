"""Validation of the identifiers that cross process boundaries.

Device ids end up in file names, database keys and MQTT topics, so they are restricted
to characters that are safe in all three. Digests are lowercase hex SHA-256.
"""

from __future__ import annotations

import re

from edgefleet.errors import InvalidInputError

_DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


# Characters of an invalid value that an error message repeats.
_SHOWN_CHARS = 80


def validate_device_id(value: str) -> str:
    """Return ``value`` if it is a valid device id, else raise ``InvalidInputError``."""
    if not isinstance(value, str) or not _DEVICE_ID.fullmatch(value):
        raise InvalidInputError(
            f"invalid device id {_shown(value)}: use 1-64 characters from A-Z, a-z, 0-9, '.', "
            "'_' and '-', starting with a letter or digit"
        )
    return value


def _shown(value: object) -> str:
    """Return ``repr(value)``, cut to its start when a long value would flood a message."""
    if isinstance(value, str) and len(value) > _SHOWN_CHARS:
        return f"{value[:_SHOWN_CHARS]!r}... ({len(value)} characters)"
    return repr(value)


def validate_sha256(value: str) -> str:
    """Return ``value`` if it is a lowercase hex SHA-256, else raise ``InvalidInputError``."""
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise InvalidInputError(
            f"invalid sha256 digest {value!r}: expected 64 lowercase hex digits"
        )
    return value
