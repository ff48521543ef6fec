"""Per-device Mosquitto credentials: password-file and ACL entries the controller writes.

When the controller is given a Mosquitto password file and ACL file
(``serve --mosquitto-password-file --mosquitto-acl-file``), every enrollment creates a
random broker password for the device. The controller writes its hash into the password
file and an ACL block that confines the device to its own topics, and returns the password
to the device over the enrollment call. Revoking the device removes both entries.

Mosquitto reads these files only at start and on SIGHUP, so reload the broker after an
enrollment or revocation (``systemctl reload mosquitto``). Until then a revoked device can
still reach the broker, but the controller ignores everything it sends.

The password hash is Mosquitto 2.0's ``$7$`` format: PBKDF2-HMAC-SHA512 with 101
iterations and a 12-byte salt, base64-encoded. These are the values ``mosquitto_passwd``
2.0 writes.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import logging
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

from edgefleet.ids import validate_device_id
from edgefleet.protos.mqtt import DeviceTopics, TopicKind

__all__ = ["DEVICE_READ_TOPICS", "DEVICE_WRITE_TOPICS", "MosquittoCredentials", "hash_password"]

logger = logging.getLogger(__name__)

# Topics a device publishes to, and topics it subscribes to (see edgefleet.protos.mqtt).
DEVICE_WRITE_TOPICS = (
    TopicKind.REGISTER,
    TopicKind.PRESENCE,
    TopicKind.TELEMETRY,
    TopicKind.STATUS,
    TopicKind.ARTIFACT_REQUEST,
)
DEVICE_READ_TOPICS = (
    TopicKind.REGISTER_REPLY,
    TopicKind.COMMANDS,
    TopicKind.DESIRED,
    TopicKind.ARTIFACT_CHUNKS,
)
_PBKDF2_ITERATIONS = 101
_SALT_BYTES = 12


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """Return ``password`` hashed in Mosquitto 2.0's ``$7$`` password-file format."""
    salt = salt if salt is not None else secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, _PBKDF2_ITERATIONS)
    encode = base64.b64encode
    return f"$7${_PBKDF2_ITERATIONS}${encode(salt).decode()}${encode(digest).decode()}"


class MosquittoCredentials:
    """Edits one password file and one ACL file; see the module docstring."""

    def __init__(self, password_file: Path, acl_file: Path) -> None:
        self.password_file = Path(password_file)
        self.acl_file = Path(acl_file)

    def add_device(self, device_id: str) -> str:
        """Create or replace the device's password and ACL block; returns the password."""
        validate_device_id(device_id)
        password = secrets.token_urlsafe(24)
        entry = f"{device_id}:{hash_password(password)}"
        self._edit(self.password_file, lambda lines: [*_without_user(lines, device_id), entry])
        block = _acl_block(device_id)
        self._edit(self.acl_file, lambda lines: [*_without_block(lines, device_id), *block])
        return password

    def remove_device(self, device_id: str) -> None:
        """Delete the device's password and ACL block, if present."""
        self._edit(self.password_file, lambda lines: _without_user(lines, device_id))
        self._edit(self.acl_file, lambda lines: _without_block(lines, device_id))

    def _edit(self, path: Path, change: Callable[[list[str]], list[str]]) -> None:
        # Controller replicas may enroll at once, so edits hold an exclusive lock on a
        # lock file next to the target, and replace the target atomically.
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(f".{path.name}.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
            text = "\n".join(change(lines)) + "\n"
            temporary = path.with_name(f".{path.name}.tmp")
            # The password file contains hashes only, but Mosquitto warns when others can
            # read it, so a new file is kept at 0600 like a secret.
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(text)
                if path.exists():
                    _copy_ownership(path, handle.fileno())
            os.replace(temporary, path)


def _copy_ownership(source: Path, descriptor: int) -> None:
    """Give the open file ``descriptor`` the mode, owner and group of ``source``.

    The broker reads these files as its own user, often through a shared group, so an
    edit must not leave them readable by the controller's user only. Changing the owner
    needs root. Without it, the file keeps the controller's user, takes ``source``'s group
    where the user belongs to it, and a warning names the file.
    """
    status = source.stat()
    os.fchmod(descriptor, stat.S_IMODE(status.st_mode))
    try:
        os.fchown(descriptor, status.st_uid, status.st_gid)
    except PermissionError:
        # Keeping the group works where the controller's user belongs to it.
        with contextlib.suppress(PermissionError):
            os.fchown(descriptor, -1, status.st_gid)
        if status.st_uid != os.geteuid():
            logger.warning(
                "%s now belongs to the controller's user (uid %d), not uid %d as before; "
                "make sure the broker can still read it (a group both share, mode 0640)",
                source,
                os.geteuid(),
                status.st_uid,
            )


def _without_user(lines: list[str], device_id: str) -> list[str]:
    return [line for line in lines if line.split(":", 1)[0] != device_id]


def _begin(device_id: str) -> str:
    return f"# edgefleet device {device_id} begin"


def _end(device_id: str) -> str:
    return f"# edgefleet device {device_id} end"


def _acl_block(device_id: str) -> list[str]:
    topics = DeviceTopics(device_id)
    return [
        _begin(device_id),
        f"user {device_id}",
        *(f"topic write {topics.topic(kind)}" for kind in DEVICE_WRITE_TOPICS),
        *(f"topic read {topics.topic(kind)}" for kind in DEVICE_READ_TOPICS),
        _end(device_id),
    ]


def _without_block(lines: list[str], device_id: str) -> list[str]:
    result: list[str] = []
    inside = False
    for line in lines:
        if line == _begin(device_id):
            inside = True
        elif line == _end(device_id):
            inside = False
        elif not inside:
            result.append(line)
    return result
