"""Staged rollouts: deploying a model to a group of devices in waves gated on health.

The ``Controller`` owns one ``RolloutManager`` (``controller.rollouts``); the HTTP API and
the command line call it::

    rollout = controller.rollouts.start(
        model_id,
        Target.for_profile("raspberry-pi-4b"),
        waves=["1", "25%", "100%"],
        gates=GateConfig(max_failure_rate=0.0, max_p95_regression=0.25, soak_s=120),
    )
    controller.rollouts.pause(rollout.id)
    controller.rollouts.resume(rollout.id)
    controller.rollouts.abort(rollout.id, reason="wrong model")
    controller.rollouts.get(rollout.id).state      # RolloutState.ABORTED

Each device gets the starting rung of the model's ladder for its profile (the most
accurate variant within its budget), or the variant named for its profile in
``variants``. The first wave is the canary. A wave starts with a deployment to each of its
devices, waits for every device's report, soaks for ``gates.soak_s`` and then checks the
health gate (see ``GateConfig``). A failed gate halts the rollout and sends every device
that the rollout updated back to the variant it served before; ``abort`` does the same on
an operator's request. Every step is an event with its reason.

All rollout state lives in the database and a background thread advances it, so a
controller restarted mid-rollout carries on where the previous process stopped. While a
rollout controls a device (see ``RolloutManager.rollout_of``), the policy engine and the
automatic placement leave that device alone.

Calls return ``Rollout`` snapshots: plain frozen dataclasses with a ``to_dict`` form for
JSON. Errors are ``RolloutError`` subclasses, plus ``UnknownModelError``,
``UnknownDeviceError`` and ``UnknownVariantError`` for ids that do not exist.
"""

from __future__ import annotations

import builtins
import dataclasses
import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from edgefleet.controller.db import Database
from edgefleet.controller.deployments import Deployer
from edgefleet.controller.errors import (
    InvalidRolloutError,
    RolloutConflictError,
    RolloutStateError,
)
from edgefleet.controller.models import (
    DeviceRow,
    DeviceState,
    EventKind,
    PlanState,
    RolloutDeviceRow,
    RolloutDeviceState,
    RolloutRow,
    RolloutState,
    RolloutWaveRow,
    VariantRow,
    WaveState,
    utc_now,
)
from edgefleet.controller.registry import Registry
from edgefleet.controller.rollout_engine import RolloutEngine
from edgefleet.controller.rollout_spec import (
    DEFAULT_WAVES,
    GateConfig,
    Target,
    TargetKind,
    Wave,
    parse_waves,
    wave_sizes,
)
from edgefleet.controller.rollout_store import RolloutStore

__all__ = [
    "DEFAULT_WAVES",
    "GateConfig",
    "Rollout",
    "RolloutDevice",
    "RolloutDeviceState",
    "RolloutManager",
    "RolloutState",
    "RolloutWave",
    "Target",
    "TargetKind",
    "Wave",
    "WaveState",
]

logger = logging.getLogger(__name__)

# Chooses a device's variant from its profile's ladder: ``Controller._starting_rung``.
ChooseVariant = Callable[[DeviceRow, list[VariantRow]], tuple[VariantRow, str]]


@dataclasses.dataclass(frozen=True, slots=True)
class RolloutDevice:
    """One device of a rollout: its wave, the variant it gets and how far it got."""

    device_id: str
    wave: int
    state: RolloutDeviceState
    variant_id: str
    previous_variant_id: str | None
    deployment_id: str | None
    revert_deployment_id: str | None
    baseline_p95_ms: float | None
    soak_p95_ms: float | None
    reason: str
    updated_at: datetime

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["state"] = self.state.value
        data["updated_at"] = self.updated_at.isoformat()
        return data


@dataclasses.dataclass(frozen=True, slots=True)
class RolloutWave:
    """One wave: its devices, its state and the figures of its health gate."""

    index: int
    spec: str
    size: int
    state: WaveState
    device_ids: tuple[str, ...]
    started_at: datetime | None
    soak_started_at: datetime | None
    finished_at: datetime | None
    result: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "spec": self.spec,
            "size": self.size,
            "state": self.state.value,
            "device_ids": list(self.device_ids),
            "started_at": _iso(self.started_at),
            "soak_started_at": _iso(self.soak_started_at),
            "finished_at": _iso(self.finished_at),
            "result": dict(self.result),
        }


@dataclasses.dataclass(frozen=True, slots=True)
class Rollout:
    """A snapshot of one rollout with its waves and devices."""

    id: str
    model_id: str
    state: RolloutState
    target: Target
    gates: GateConfig
    # Variant id per profile name, as the operator chose them; other profiles get the
    # starting rung of the model's ladder.
    variants: Mapping[str, str]
    current_wave: int
    reason: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    waves: tuple[RolloutWave, ...]
    devices: tuple[RolloutDevice, ...]
    # Set only on the snapshot that ``start`` returns: the target devices that were offline
    # when the rollout started, and those that ``online_only`` left out of it.
    offline_device_ids: tuple[str, ...] = ()
    left_out_device_ids: tuple[str, ...] = ()

    @property
    def settled(self) -> bool:
        """Whether no deployment or revert of this rollout is waiting for a device."""
        return all(device.state.is_settled for device in self.devices)

    def device(self, device_id: str) -> RolloutDevice:
        """Return one device of the rollout; raises ``KeyError`` for another id."""
        for device in self.devices:
            if device.device_id == device_id:
                return device
        raise KeyError(f"device {device_id!r} is not part of rollout {self.id}")

    def to_dict(self) -> dict[str, Any]:
        """Return the rollout as JSON-safe values (times as ISO 8601 strings)."""
        return {
            "id": self.id,
            "model_id": self.model_id,
            "state": self.state.value,
            "target": self.target.to_dict(),
            "gates": self.gates.to_dict(),
            "variants": dict(self.variants),
            "current_wave": self.current_wave,
            "reason": self.reason,
            "settled": self.settled,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "finished_at": _iso(self.finished_at),
            "waves": [wave.to_dict() for wave in self.waves],
            "devices": [device.to_dict() for device in self.devices],
            "offline_device_ids": list(self.offline_device_ids),
            "left_out_device_ids": list(self.left_out_device_ids),
        }


class RolloutManager:
    """Starts, controls and advances rollouts; see the module docstring.

    Every public call may run on any thread. One lock serializes them with the
    background thread that ``start_engine`` runs, so a pause or an abort never interleaves
    with a wave being started.
    """

    def __init__(
        self,
        registry: Registry,
        database: Database,
        deployer: Deployer,
        *,
        choose_variant: ChooseVariant,
        check_interval_s: float = 1.0,
    ) -> None:
        self._registry = registry
        self._store = RolloutStore(database)
        self._engine = RolloutEngine(registry, self._store, deployer)
        self._choose_variant = choose_variant
        self._check_interval_s = check_interval_s
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._controlled: dict[str, str] = {}

    # -- operator calls -------------------------------------------------------------

    def start(
        self,
        model_id: str | None,
        target: Target | str,
        *,
        waves: Sequence[Wave | str | int] | str = DEFAULT_WAVES,
        gates: GateConfig | Mapping[str, Any] | None = None,
        variants: Mapping[str, str] | None = None,
        online_only: bool = False,
    ) -> Rollout:
        """Start rolling ``model_id`` (None: the active model) out to ``target``.

        ``target`` is a ``Target`` or its text form (``all``, ``profile:NAME``,
        ``devices:ID,ID``). ``waves`` are cumulative sizes ending at 100%; ``variants``
        maps a profile name to the variant its devices get instead of the starting rung.
        The first wave starts at once.

        Waves take the devices that need a deployment first, online before offline, so
        that the canary tests a real update. An offline device that does not report
        within ``gates.deploy_timeout_s`` fails its wave; ``online_only`` leaves offline
        devices out. The returned snapshot lists the offline target devices in
        ``offline_device_ids`` and those left out in ``left_out_device_ids``.

        Raises ``UnknownModelError``, ``UnknownDeviceError`` or ``UnknownVariantError`` for
        an id that does not exist. Raises ``InvalidRolloutError`` for an empty target, waves
        that do not increase, invalid gates or a profile without a ladder. Raises
        ``RolloutConflictError`` when a target device is in another unfinished rollout.
        """
        wave_specs = parse_waves(waves)
        if isinstance(target, str):
            target = Target.parse(target)
        if gates is None:
            gates = GateConfig()
        elif not isinstance(gates, GateConfig):
            gates = GateConfig.from_mapping(gates)
        model = (
            self._registry.get_model(model_id)
            if model_id is not None
            else self._registry.active_model()
        )
        if model is None:
            raise InvalidRolloutError("no model is registered; register a model first")

        with self._lock:
            devices = self._resolve_target(target)
            offline = [d.device_id for d in devices if d.state is not DeviceState.ONLINE]
            left_out: builtins.list[str] = []
            if online_only:
                left_out = offline
                devices = [d for d in devices if d.state is DeviceState.ONLINE]
                if not devices:
                    raise InvalidRolloutError(
                        f"every device of target {target.describe()!r} is offline "
                        f"({_first_ids(left_out)}), and online_only leaves them out; start the "
                        "rollout when they are back, or without online_only"
                    )
            self._check_conflicts(devices)
            chosen = _deployments_first(
                self._choose_variants(model.id, devices, dict(variants or {}))
            )
            rollout = self._create(
                model.id, target, gates, dict(variants or {}), wave_specs, chosen
            )
            self._registry.record_event(
                EventKind.ROLLOUT_STARTED,
                reason=(
                    f"rollout {rollout.id} of model {model.id} to {target.describe()} "
                    f"({len(devices)} devices) in waves "
                    + ",".join(wave.describe() for wave in wave_specs)
                ),
                details={
                    "rollout_id": rollout.id,
                    "model_id": model.id,
                    "gates": gates.to_dict(),
                    "left_out_device_ids": left_out,
                },
            )
            logger.info(
                "started rollout %s of model %s to %s: %d devices",
                rollout.id,
                model.id,
                target.describe(),
                len(devices),
                extra={"rollout_id": rollout.id},
            )
            self._refresh_controlled()
            self._engine.advance(rollout.id)
            return dataclasses.replace(
                self.get(rollout.id),
                offline_device_ids=tuple(d for d in offline if d not in left_out),
                left_out_device_ids=tuple(left_out),
            )

    def pause(self, rollout_id: str, *, reason: str = "") -> Rollout:
        """Stop starting deployments; those in flight finish and the gates keep running.

        Raises ``UnknownRolloutError``, or ``RolloutStateError`` unless it is running.
        """
        with self._lock:
            row = self._require_state(rollout_id, "pause", RolloutState.RUNNING)
            self._store.update(row.id, state=RolloutState.PAUSED)
            self._registry.record_event(
                EventKind.ROLLOUT_PAUSED,
                reason=reason or f"rollout {row.id} paused by an operator",
                details={"rollout_id": row.id, "wave": row.current_wave},
            )
            logger.info(
                "paused rollout %s at wave %d",
                row.id,
                row.current_wave,
                extra={"rollout_id": row.id},
            )
            return self.get(row.id)

    def resume(self, rollout_id: str) -> Rollout:
        """Resume a paused rollout; raises ``RolloutStateError`` unless it is paused."""
        with self._lock:
            row = self._require_state(rollout_id, "resume", RolloutState.PAUSED)
            self._store.update(row.id, state=RolloutState.RUNNING)
            self._registry.record_event(
                EventKind.ROLLOUT_RESUMED,
                reason=f"rollout {row.id} resumed by an operator",
                details={"rollout_id": row.id, "wave": row.current_wave},
            )
            logger.info(
                "resumed rollout %s at wave %d",
                row.id,
                row.current_wave,
                extra={"rollout_id": row.id},
            )
            self._engine.advance(row.id)
            return self.get(row.id)

    def abort(self, rollout_id: str, *, reason: str = "") -> Rollout:
        """End the rollout and send every device it updated back to its previous variant.

        Raises ``RolloutStateError`` when the rollout already ended.
        """
        with self._lock:
            row = self._require_state(
                rollout_id, "abort", RolloutState.RUNNING, RolloutState.PAUSED
            )
            self._engine.stop(
                row,
                state=RolloutState.ABORTED,
                reason=reason or "aborted by an operator",
                event=EventKind.ROLLOUT_ABORTED,
            )
            self._refresh_controlled()
            return self.get(row.id)

    def get(self, rollout_id: str) -> Rollout:
        """Return a snapshot of the rollout; raises ``UnknownRolloutError``."""
        with self._lock:
            row = self._store.get(rollout_id)
            return _snapshot(row, self._store.waves(row.id), self._store.devices(row.id))

    def list(
        self, *, states: Iterable[RolloutState] | None = None, limit: int | None = None
    ) -> builtins.list[Rollout]:
        """Return rollouts, newest first, optionally only those in ``states``."""
        with self._lock:
            rows = self._store.list(states=states, limit=limit)
            return [
                _snapshot(row, self._store.waves(row.id), self._store.devices(row.id))
                for row in rows
            ]

    def rollout_of(self, device_id: str) -> str | None:
        """Return the id of the rollout that controls the device, or None.

        The policy engine and the automatic placement leave such a device alone.
        """
        return self._controlled.get(device_id)

    def serves_other_model(self, device: DeviceRow, model_id: str) -> bool:
        """Return whether the device serves a stored variant of a model other than ``model_id``.

        The automatic placement leaves such a device to a rollout of the new model.
        """
        if not device.current_variant_id:
            return False
        owner = self._store.find_variant_model(
            device.profile_fingerprint, device.current_variant_id, prefer_model_id=model_id
        )
        return owner is not None and owner != model_id

    # -- engine thread --------------------------------------------------------------

    def start_engine(self) -> None:
        """Advance the rollouts left by a previous process, then keep advancing them."""
        self.step()
        self._thread = threading.Thread(target=self._run, name="rollouts", daemon=True)
        self._thread.start()

    def stop_engine(self, *, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)

    def notify(self) -> None:
        """Wake the engine early, after a device reported a deployment's status."""
        self._wake.set()

    def step(self) -> None:
        """Advance every rollout that is not finished by one step."""
        with self._lock:
            for row in self._store.list_active():
                self._engine.advance(row.id)
            for rollout_id in self._store.rollouts_with_unsettled_devices():
                self._engine.follow_reverts(rollout_id)
            self._refresh_controlled()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._check_interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.step()
            except Exception:
                # The engine must outlive a transient database error; the next step
                # retries from the state stored so far.
                logger.exception("advancing rollouts failed; retrying")

    def _refresh_controlled(self) -> None:
        self._controlled = self._store.controlled_devices()

    # -- starting a rollout -----------------------------------------------------------

    def _resolve_target(self, target: Target) -> builtins.list[DeviceRow]:
        if target.kind is TargetKind.DEVICES:
            devices = [self._registry.get_device(device_id) for device_id in target.device_ids]
        else:
            devices = self._registry.list_devices()
            if target.kind is TargetKind.PROFILE:
                names = sorted({str(device.profile.get("name")) for device in devices})
                devices = [d for d in devices if d.profile.get("name") == target.profile]
                if not devices:
                    raise InvalidRolloutError(
                        f"no registered device has profile {target.profile!r}; known profiles: "
                        f"{', '.join(names) or 'none'}"
                    )
        if not devices:
            raise InvalidRolloutError(
                f"target {target.describe()!r} matches no registered device; "
                "wait for devices to register"
            )
        return sorted(devices, key=lambda d: d.device_id)

    def _check_conflicts(self, devices: Sequence[DeviceRow]) -> None:
        controlled = self._store.controlled_devices()
        for device in devices:
            rollout_id = controlled.get(device.device_id)
            if rollout_id is not None:
                raise RolloutConflictError(
                    f"device {device.device_id} belongs to rollout {rollout_id}, which has not "
                    "finished; wait for it, or abort it first"
                )

    def _choose_variants(
        self, model_id: str, devices: Sequence[DeviceRow], variants: dict[str, str]
    ) -> builtins.list[tuple[DeviceRow, VariantRow, str]]:
        profile_names = {str(device.profile.get("name")) for device in devices}
        unknown = sorted(set(variants) - profile_names)
        if unknown:
            raise InvalidRolloutError(
                f"variants names profile(s) {', '.join(unknown)}, but no target device has "
                f"them; the target's profiles are {', '.join(sorted(profile_names))}"
            )
        chosen = []
        for device in devices:
            name = str(device.profile.get("name"))
            if name in variants:
                variant = self._registry.get_variant(
                    model_id, device.profile_fingerprint, variants[name]
                )
                chosen.append((device, variant, f"variant {variant.variant_id} chosen for {name}"))
                continue
            ladder = self._registry.ladder(model_id, device.profile_fingerprint)
            if not ladder:
                raise InvalidRolloutError(self._no_ladder_message(model_id, device))
            variant, reason = self._choose_variant(device, ladder)
            chosen.append((device, variant, reason.removeprefix("initial deployment: ")))
        return chosen

    def _no_ladder_message(self, model_id: str, device: DeviceRow) -> str:
        name = device.profile.get("name")
        plans = self._registry.list_plans(
            model_id=model_id, profile_fingerprint=device.profile_fingerprint
        )
        if not plans:
            status = "it was never planned for that profile; register the model again to plan it"
        elif plans[-1].state in (PlanState.PENDING, PlanState.RUNNING):
            status = "its plan is still running; start the rollout when it is done"
        else:
            status = f"its last plan ended {plans[-1].state.value}: {plans[-1].reason}"
        return (
            f"model {model_id} has no ladder for profile {name} (device {device.device_id}); "
            f"{status}"
        )

    def _create(
        self,
        model_id: str,
        target: Target,
        gates: GateConfig,
        variants: dict[str, str],
        wave_specs: Sequence[Wave],
        chosen: Sequence[tuple[DeviceRow, VariantRow, str]],
    ) -> RolloutRow:
        rollout_id = uuid.uuid4().hex[:12]
        now = utc_now()
        sizes = wave_sizes(wave_specs, len(chosen))
        # Waves that add no device are dropped by wave_sizes; name each kept one after the
        # operator's wave that completes it.
        specs: builtins.list[str] = []
        reached = 0
        for wave in wave_specs:
            size = wave.size(len(chosen))
            if size > reached:
                specs.append(wave.describe())
                reached = size

        wave_rows = [
            RolloutWaveRow(
                rollout_id=rollout_id,
                index=index,
                spec=spec,
                size=size,
                state=WaveState.PENDING,
                result={},
            )
            for index, (spec, size) in enumerate(zip(specs, sizes, strict=True))
        ]
        device_rows = []
        position = 0
        for index, size in enumerate(sizes):
            for device, variant, reason in chosen[position : position + size]:
                previous = device.current_variant_id
                previous_model = (
                    self._store.find_variant_model(device.profile_fingerprint, previous)
                    if previous
                    else None
                )
                device_rows.append(
                    RolloutDeviceRow(
                        rollout_id=rollout_id,
                        device_id=device.device_id,
                        wave=index,
                        state=RolloutDeviceState.PENDING,
                        variant_id=variant.variant_id,
                        previous_variant_id=previous,
                        previous_model_id=previous_model,
                        reason=reason,
                        updated_at=now,
                    )
                )
            position += size
        rollout = RolloutRow(
            id=rollout_id,
            model_id=model_id,
            state=RolloutState.RUNNING,
            target=target.to_dict(),
            gates=gates.to_dict(),
            variants=variants,
            current_wave=0,
            reason="",
            created_at=now,
            updated_at=now,
        )
        return self._store.create(rollout, wave_rows, device_rows)

    def _require_state(self, rollout_id: str, action: str, *allowed: RolloutState) -> RolloutRow:
        row = self._store.get(rollout_id)
        if row.state not in allowed:
            raise RolloutStateError(
                f"cannot {action} rollout {row.id}: it is {row.state.value}, and only a "
                f"{' or '.join(state.value for state in allowed)} rollout can be {action}d"
                if action != "abort"
                else f"cannot abort rollout {row.id}: it already ended {row.state.value}"
            )
        return row


def _deployments_first(
    chosen: Sequence[tuple[DeviceRow, VariantRow, str]],
) -> builtins.list[tuple[DeviceRow, VariantRow, str]]:
    """Order the devices for the waves: those that need a deployment first, so that the
    canary tests a real update, and online ones before offline ones, so that an offline
    device does not hold up an early wave.
    """
    return sorted(
        chosen,
        key=lambda item: (
            item[0].current_variant_id == item[1].variant_id,
            item[0].state is not DeviceState.ONLINE,
            item[0].device_id,
        ),
    )


def _first_ids(device_ids: Sequence[str], *, limit: int = 5) -> str:
    """Return the first ``limit`` ids, and how many more there are."""
    text = ", ".join(device_ids[:limit])
    if len(device_ids) > limit:
        text += f" and {len(device_ids) - limit} more"
    return text


def _snapshot(
    row: RolloutRow, waves: Sequence[RolloutWaveRow], devices: Sequence[RolloutDeviceRow]
) -> Rollout:
    return Rollout(
        id=row.id,
        model_id=row.model_id,
        state=row.state,
        target=Target.from_mapping(row.target),
        gates=GateConfig.from_mapping(row.gates),
        variants=dict(row.variants),
        current_wave=row.current_wave,
        reason=row.reason,
        created_at=row.created_at,
        updated_at=row.updated_at,
        finished_at=row.finished_at,
        waves=tuple(
            RolloutWave(
                index=wave.index,
                spec=wave.spec,
                size=wave.size,
                state=wave.state,
                device_ids=tuple(d.device_id for d in devices if d.wave == wave.index),
                started_at=wave.started_at,
                soak_started_at=wave.soak_started_at,
                finished_at=wave.finished_at,
                result=dict(wave.result),
            )
            for wave in waves
        ),
        devices=tuple(
            RolloutDevice(
                device_id=device.device_id,
                wave=device.wave,
                state=device.state,
                variant_id=device.variant_id,
                previous_variant_id=device.previous_variant_id,
                deployment_id=device.deployment_id,
                revert_deployment_id=device.revert_deployment_id,
                baseline_p95_ms=device.baseline_p95_ms,
                soak_p95_ms=device.soak_p95_ms,
                reason=device.reason,
                updated_at=device.updated_at,
            )
            for device in devices
        ),
    )


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
