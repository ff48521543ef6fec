"""The agent's state directory: installed models, their manifests and the update state.

Layout under the state directory::

    models/<sha256>.onnx        verified model files, named by their digest
    models/<sha256>.json        the VariantManifest of each model (protobuf JSON)
    downloads/<sha256>.part     transfers in progress, resumed from their size
    state.json                  current and previous model, applied command ids, update record
    committed.json              current and previous model only, the fallback for state.json
    agent.json                  pid and local API address, for tools on the device

``state.json`` is replaced atomically (temporary file, fsync, ``os.replace``), so a power
cut leaves either the old or the new state on disk, never a torn file. A state file that is
corrupt anyway (a failing SD card, a hand edit) must not leave the device without a model:
the store then reads ``committed.json``, and failing that takes the most recently installed
models in ``models/`` as current and previous.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from edgefleet.agent.errors import StorageError
from edgefleet.agent.update import UpdateState
from edgefleet.ids import validate_sha256
from edgefleet.protos.v1 import fleet_pb2

__all__ = ["AgentState", "AgentStore", "UpdateRecord", "write_json_atomic"]

logger = logging.getLogger(__name__)

STATE_VERSION = 1
# Command ids are remembered so that a re-sent command is not applied twice. Commands are
# rare (one per deployment), so the last 256 cover any realistic re-send window.
MAX_APPLIED_COMMAND_IDS = 256


@dataclasses.dataclass(frozen=True, slots=True)
class UpdateRecord:
    """The deployment in progress, written before each risky step of an update."""

    command_id: str
    deployment_id: str
    variant_id: str
    sha256: str
    state: UpdateState
    # Runs of this manifest so far, restarts included; the deployer gives up at a limit.
    attempts: int = 0
    # The DeployCommand as protobuf JSON, so that a restarted agent can resume the update.
    command_json: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "state": self.state.value}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UpdateRecord:
        known = {field.name for field in dataclasses.fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        return cls(**{**values, "state": UpdateState(data["state"])})

    def deploy_command(self) -> fleet_pb2.DeployCommand:
        """Parse ``command_json``; raises ``StorageError`` when it is missing or invalid."""
        command = fleet_pb2.DeployCommand()
        try:
            json_format.Parse(self.command_json, command)
        except json_format.ParseError as exc:
            raise StorageError(
                f"update record of deployment {self.deployment_id} has an invalid command: {exc}"
            ) from exc
        return command


@dataclasses.dataclass(frozen=True, slots=True)
class AgentState:
    """Contents of ``state.json``: which models serve, and which commands were applied."""

    current: str | None = None  # sha256 of the serving model
    previous: str | None = None  # sha256 of the model served before it
    applied_command_ids: tuple[str, ...] = ()
    update: UpdateRecord | None = None
    # Version of the last signed manifest accepted; an older one is a replay.
    manifest_version: int | None = None
    # Latest controller time seen (Unix ms): the device clock is never trusted below it.
    time_floor_ms: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "current": self.current,
            "previous": self.previous,
            "applied_command_ids": list(self.applied_command_ids),
            "update": self.update.to_dict() if self.update else None,
            "manifest_version": self.manifest_version,
            "time_floor_ms": self.time_floor_ms,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AgentState:
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported state version {data.get('version')!r}")
        update = data.get("update")
        return cls(
            current=_optional_sha(data.get("current")),
            previous=_optional_sha(data.get("previous")),
            applied_command_ids=tuple(str(item) for item in data.get("applied_command_ids", [])),
            update=UpdateRecord.from_dict(update) if update else None,
            manifest_version=data.get("manifest_version"),
            time_floor_ms=int(data.get("time_floor_ms", 0)),
        )


class AgentStore:
    """Models, manifests and update state under one state directory; safe across threads."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.models_dir = self.root / "models"
        self.downloads_dir = self.root / "downloads"
        self._state_path = self.root / "state.json"
        self._committed_path = self.root / "committed.json"
        self._lock = threading.Lock()
        self._process_lock: int | None = None
        try:
            self.models_dir.mkdir(parents=True, exist_ok=True)
            self.downloads_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create state directory {self.root}: {exc}") from exc
        # The kernel remounts a failing SD card read-only. The agent then still serves its
        # committed model, but cannot record anything or install updates.
        self.read_only = bool(os.statvfs(self.root).f_flag & os.ST_RDONLY)
        self._state = self._read_state()

    def claim(self) -> None:
        """Lock the state directory for this process, so that no second agent shares it.

        Raises ``StorageError`` when another process holds the lock. The kernel releases
        it when the process exits, so a crashed agent never leaves the directory locked.
        """
        path = self.root / "agent.lock"
        try:
            if self.read_only:
                # flock works on a descriptor opened for reading, and on the directory
                # itself when the lock file was never created.
                descriptor = os.open(path if path.is_file() else self.root, os.O_RDONLY)
            else:
                descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise StorageError(_describe_lock_error(exc, path)) from exc
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(descriptor)
            raise StorageError(
                f"state directory {self.root} is in use by another agent process; "
                "give each agent its own --state-dir"
            ) from None
        self._process_lock = descriptor

    def release(self) -> None:
        """Release the lock taken by ``claim``; a no-op when none is held."""
        if self._process_lock is not None:
            os.close(self._process_lock)
            self._process_lock = None

    # -- models -------------------------------------------------------------------------

    def model_path(self, sha256: str) -> Path:
        return self.models_dir / f"{validate_sha256(sha256)}.onnx"

    def part_path(self, sha256: str) -> Path:
        return self.downloads_dir / f"{validate_sha256(sha256)}.part"

    def has_model(self, sha256: str) -> bool:
        return self.model_path(sha256).is_file() and self._manifest_path(sha256).is_file()

    def install(self, manifest: fleet_pb2.VariantManifest, verified_file: Path) -> Path:
        """Move a verified artifact into ``models/`` next to its manifest; return its path."""
        target = self.model_path(manifest.sha256)
        try:
            self._write_manifest(manifest)
            os.replace(verified_file, target)
            _fsync_directory(self.models_dir)
        except OSError as exc:
            raise StorageError(_describe_os_error(exc, f"cannot install model {target}")) from exc
        return target

    def restore_manifest(self, manifest: fleet_pb2.VariantManifest) -> None:
        """Write the manifest of a model already in ``models/``, replacing a damaged one.

        The caller must have verified the model file against ``manifest``.
        """
        try:
            self._write_manifest(manifest)
        except OSError as exc:
            path = self._manifest_path(manifest.sha256)
            raise StorageError(_describe_os_error(exc, f"cannot write manifest {path}")) from exc

    def _write_manifest(self, manifest: fleet_pb2.VariantManifest) -> None:
        write_bytes_atomic(
            self._manifest_path(manifest.sha256),
            json_format.MessageToJson(manifest, indent=None).encode(),
        )

    def load_manifest(self, sha256: str) -> fleet_pb2.VariantManifest:
        path = self._manifest_path(sha256)
        manifest = fleet_pb2.VariantManifest()
        try:
            json_format.Parse(path.read_text(encoding="utf-8"), manifest)
        except (OSError, json_format.ParseError) as exc:
            raise StorageError(f"cannot read manifest {path}: {exc}") from exc
        return manifest

    def remove_unused_models(self) -> list[str]:
        """Delete models other than current and previous; return the removed digests."""
        keep = {self.state.current, self.state.previous}
        removed = []
        for path in self.models_dir.glob("*.onnx"):
            if path.stem in keep:
                continue
            path.unlink(missing_ok=True)
            self._manifest_path(path.stem).unlink(missing_ok=True)
            removed.append(path.stem)
        return removed

    def _manifest_path(self, sha256: str) -> Path:
        return self.models_dir / f"{validate_sha256(sha256)}.json"

    # -- state --------------------------------------------------------------------------

    @property
    def state(self) -> AgentState:
        with self._lock:
            return self._state

    def commit(self, sha256: str, *, update: UpdateRecord | None = None) -> AgentState:
        """Make ``sha256`` the current model; the current one becomes the previous.

        ``update`` replaces the update record in the same atomic write, so a crash never
        leaves a committed model with its deployment still recorded as in progress.
        """
        with self._lock:
            old = self._state
            previous = old.previous if old.current == sha256 else old.current
            new = dataclasses.replace(old, current=sha256, previous=previous, update=update)
            self._write_committed(new)
            return self._write_state(new)

    def roll_back(self) -> AgentState:
        """Make the previous model current again; the failed current one is forgotten."""
        with self._lock:
            old = self._state
            new = dataclasses.replace(old, current=old.previous, previous=None)
            self._write_committed(new)
            return self._write_state(new)

    def accept_manifest(self, version: int, issued_at_ms: int) -> None:
        """Record a verified manifest's version and raise the time floor to its issue time."""
        with self._lock:
            old = self._state
            self._write_state(
                dataclasses.replace(
                    old,
                    manifest_version=max(version, old.manifest_version or 0),
                    time_floor_ms=max(old.time_floor_ms, issued_at_ms),
                )
            )

    def raise_time_floor(self, controller_time_ms: int) -> None:
        """Remember the controller's time, when it is later than any seen before."""
        with self._lock:
            if controller_time_ms > self._state.time_floor_ms:
                self._write_state(
                    dataclasses.replace(self._state, time_floor_ms=controller_time_ms)
                )

    def is_applied(self, command_id: str) -> bool:
        with self._lock:
            return command_id in self._state.applied_command_ids

    def mark_applied(self, command_id: str) -> None:
        with self._lock:
            ids = [item for item in self._state.applied_command_ids if item != command_id]
            ids.append(command_id)
            recent_ids = tuple(ids[-MAX_APPLIED_COMMAND_IDS:])
            self._write_state(dataclasses.replace(self._state, applied_command_ids=recent_ids))

    def record_update(self, update: UpdateRecord | None) -> None:
        """Persist the update in progress (or clear it with ``None``) before the next step."""
        with self._lock:
            self._write_state(dataclasses.replace(self._state, update=update))

    def _read_state(self) -> AgentState:
        try:
            data = json.loads(self._state_path.read_text(encoding="utf-8"))
            return AgentState.from_dict(data)
        except FileNotFoundError:
            return AgentState()
        except (OSError, TypeError, ValueError, KeyError, AttributeError) as exc:
            # A corrupt state file must not keep the agent from starting, nor leave it
            # without the model it committed. The update record and the applied command
            # ids are lost; the controller re-sends its desired deployment.
            logger.error(
                "state file %s is unreadable (%s); recovering from models/", self._state_path, exc
            )
        return self._recover_committed()

    def _recover_committed(self) -> AgentState:
        try:
            data = json.loads(self._committed_path.read_text(encoding="utf-8"))
            current = _optional_sha(data["current"])
            previous = _optional_sha(data["previous"])
        except (OSError, TypeError, ValueError, KeyError) as exc:
            logger.error(
                "cannot read %s either (%s); using the newest installed models",
                self._committed_path,
                exc,
            )
            current, previous = self._newest_installed()
        else:
            # Only the model file is required: the agent restores a committed model whose
            # manifest is damaged (``Agent._restore_model``).
            if current is not None and not self.model_path(current).is_file():
                current, previous = previous, None
        logger.warning("recovered state: current model %s, previous %s", current, previous)
        return AgentState(current=current, previous=previous)

    def _newest_installed(self) -> tuple[str | None, str | None]:
        installed = []
        for path in self.models_dir.glob("*.onnx"):
            try:
                sha256 = validate_sha256(path.stem)
            except ValueError:
                continue
            if self.has_model(sha256):
                installed.append((path.stat().st_mtime_ns, sha256))
        installed.sort(reverse=True)
        digests = [sha256 for _, sha256 in installed]
        return (digests[0] if digests else None, digests[1] if len(digests) > 1 else None)

    def _write_committed(self, state: AgentState) -> None:
        write_json_atomic(
            self._committed_path,
            {"version": STATE_VERSION, "current": state.current, "previous": state.previous},
        )

    def _write_state(self, state: AgentState) -> AgentState:
        write_json_atomic(self._state_path, state.to_dict())
        self._state = state
        return state


def write_json_atomic(path: Path, data: Any) -> None:
    """Replace ``path`` with ``data`` as JSON; raises ``StorageError`` (disk full included)."""
    try:
        write_bytes_atomic(path, json.dumps(data, indent=2, sort_keys=True).encode())
    except OSError as exc:
        raise StorageError(_describe_os_error(exc, f"cannot write {path}")) from exc


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file, fsync it and rename it over ``path``."""
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(path: Path) -> None:
    # The rename is durable only once the directory entry is flushed too.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _describe_os_error(exc: OSError, action: str) -> str:
    if exc.errno == errno.ENOSPC:
        return f"{action}: no space left on device; free disk space in the state directory"
    return f"{action}: {exc}"


def _describe_lock_error(exc: OSError, path: Path) -> str:
    action = f"cannot open the lock file {path}"
    if exc.errno == errno.EISDIR:
        return f"{action}: it is a directory; remove it, the agent creates the file"
    if exc.errno == errno.EROFS:
        return (
            f"{action}: the state directory {path.parent} is on a read-only file system; "
            "the kernel remounts a failing SD card read-only, so check or replace the card, "
            "or pass a writable --state-dir"
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (
            f"{action}: permission denied ({exc.strerror}); run the agent as the owner of "
            f"the state directory {path.parent}, or pass a writable --state-dir"
        )
    return f"{action}: {exc}"


def _optional_sha(value: Any) -> str | None:
    return None if value is None else validate_sha256(value)
