"""The planner service: compresses the registered model once per distinct device profile.

``Planner.run`` calls ``edgefleet.compress.plan`` for one (model, profile) pair, copies
every variant into the artifact store, builds the manifests and stores the ladder in the
registry. ``PlannerWorker`` runs such jobs, and host calibrations, one at a time on a
single background thread: the controller targets small machines, and two jobs measuring
latency at the same time would skew each other's figures.

A recompression job (``PlanJob.tighter``) plans with ``compress.tighter_recipes`` of the
profile's last report and appends the new ladder rungs below the existing ones.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import shutil
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from edgefleet.controller.artifacts import ArtifactStore
from edgefleet.controller.errors import ControllerStateError, PlanningError
from edgefleet.controller.manifests import build_manifest, recipe_json
from edgefleet.controller.models import ModelRow, PlanState
from edgefleet.controller.registry import Registry, VariantRecord
from edgefleet.errors import InvalidInputError

__all__ = ["PlanJob", "PlanOutcome", "Planner", "PlannerWorker", "model_digest"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class PlanJob:
    """One request to compress a model for a profile."""

    plan_id: int
    model_id: str
    profile_fingerprint: str
    latency_scale: float
    # Recompression: plan tighter recipes than the last report and extend the ladder.
    tighter: bool = False
    # The device whose breach asked for a recompression, stepped down when it finishes.
    device_id: str | None = None


@dataclass(frozen=True, slots=True)
class PlanOutcome:
    """A finished plan: the full ladder and the rungs this plan added."""

    job: PlanJob
    ladder: tuple[str, ...]
    new_rungs: tuple[str, ...]
    reason: str


def model_digest(source: str, *, data_path: Path, weights_path: Path | None) -> str:
    """Return the SHA-256 over a model's source file, weights and evaluation data.

    ``source`` is an ``.onnx`` path or ``path/to/file.py:factory``; the factory name is part
    of the digest, because one file may define several models.
    """
    if source.endswith(".onnx"):
        source_path, factory = source, ""
    else:
        source_path, _, factory = source.rpartition(":")
    inputs = {"source": Path(source_path), "weights": weights_path, "data": data_path}

    digest = hashlib.sha256()
    for label, path in inputs.items():
        if path is not None:
            digest.update(f"{label}={_file_sha256(path)}\n".encode())
    digest.update(f"factory={factory}\n".encode())
    return digest.hexdigest()


def check_model_files(source: str, *, data_path: Path, weights_path: Path | None) -> None:
    """Raise ``InvalidInputError`` unless the model loads and takes the dataset's samples.

    These are the checks ``edgefleet compress`` makes before it plans. Without them a model
    that cannot take its data would become the active model and fail every plan.
    """
    from edgefleet import compress
    from edgefleet.compress.planner import check_dataset_fits

    dataset = compress.load_dataset(data_path)
    if source.endswith(".onnx"):
        model: Any = compress.load_onnx_model(source)
    else:
        model = compress.load_torch_model(source, weights=weights_path)
    try:
        check_dataset_fits(model, dataset)
    except InvalidInputError as exc:
        raise type(exc)(f"model {Path(source).name} with data {data_path.name}: {exc}") from exc


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        raise PlanningError(f"cannot read {path}: {exc}") from exc
    return digest.hexdigest()


class Planner:
    """Runs plans synchronously; see the module docstring."""

    def __init__(
        self,
        registry: Registry,
        artifacts: ArtifactStore,
        *,
        work_dir: Path,
        cache_dir: Path | None = None,
    ) -> None:
        self._registry = registry
        self._artifacts = artifacts
        self._work_dir = Path(work_dir)
        self._cache_dir = cache_dir
        # Last PlanReport per (model, profile): tighter_recipes needs the report object.
        self._reports: dict[tuple[str, str], Any] = {}
        self._inputs: dict[str, tuple[Any, Any]] = {}

    def run(self, job: PlanJob) -> PlanOutcome:
        """Run ``job`` and store its variants; marks the plan DONE or FAILED.

        Raises ``PlanningError`` when compression fails or nothing fits the profile.
        """
        self._registry.update_plan(job.plan_id, state=PlanState.RUNNING)
        try:
            outcome = self._run(job)
        except Exception as exc:
            # compress raises its own errors, but also torch and onnxruntime ones; the
            # plan must end FAILED whatever went wrong, so the broad except is deliberate.
            reason = f"{type(exc).__name__}: {exc}"
            self._registry.update_plan(job.plan_id, state=PlanState.FAILED, reason=reason)
            if isinstance(exc, PlanningError):
                raise
            raise PlanningError(
                f"planning model {job.model_id} for profile {job.profile_fingerprint[:12]} "
                f"failed: {reason}"
            ) from exc
        return outcome

    def _run(self, job: PlanJob) -> PlanOutcome:
        from edgefleet import compress

        model_row = self._registry.get_model(job.model_id)
        profile = self._registry.get_profile(job.profile_fingerprint)
        model, dataset = self._load_inputs(model_row)
        out_dir = self._work_dir / job.model_id / job.profile_fingerprint[:16] / str(job.plan_id)
        shutil.rmtree(out_dir, ignore_errors=True)

        recipes = None
        if job.tighter:
            previous = self._previous_report(job, model, dataset, profile)
            recipes = compress.tighter_recipes(previous)
            if not recipes:
                raise PlanningError(
                    f"no tighter recipes left for profile {profile.name!r}; the cheapest "
                    "variant is as small as the compression library can make it"
                )
        logger.info(
            "planning model %s for profile %s (%s) at latency scale %.3f%s",
            job.model_id,
            profile.name,
            job.profile_fingerprint[:12],
            job.latency_scale,
            " with tighter recipes" if job.tighter else "",
        )
        report = compress.plan(
            model,
            dataset,
            profile,
            out_dir=out_dir,
            latency_scale=job.latency_scale,
            recipes=recipes,
            cache_dir=self._cache_dir,
            progress=lambda message: logger.info("plan %d: %s", job.plan_id, message),
        )
        self._reports[(job.model_id, job.profile_fingerprint)] = report
        try:
            return self._store(job, report)
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)

    def _load_inputs(self, model_row: ModelRow) -> tuple[Any, Any]:
        cached = self._inputs.get(model_row.id)
        if cached is not None:
            return cached
        from edgefleet import compress

        model: Any
        if model_row.source.endswith(".onnx"):
            model = Path(model_row.source)
        else:
            weights = Path(model_row.weights_path) if model_row.weights_path else None
            model = compress.load_torch_model(model_row.source, weights=weights)
        dataset = compress.load_dataset(model_row.data_path)
        self._inputs = {model_row.id: (model, dataset)}  # keep only the active model
        return model, dataset

    def _previous_report(self, job: PlanJob, model: Any, dataset: Any, profile: Any) -> Any:
        key = (job.model_id, job.profile_fingerprint)
        if key in self._reports:
            return self._reports[key]
        # After a restart the report object is gone; replanning the default recipes
        # rebuilds it (quickly, when compress's cache_dir still has the variants).
        from edgefleet import compress

        logger.info("rebuilding the plan report of profile %s before recompressing", profile.name)
        out_dir = self._work_dir / job.model_id / job.profile_fingerprint[:16] / "replan"
        try:
            report = compress.plan(
                model,
                dataset,
                profile,
                out_dir=out_dir,
                latency_scale=job.latency_scale,
                cache_dir=self._cache_dir,
            )
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)
        self._reports[key] = report
        return report

    def _store(self, job: PlanJob, report: Any) -> PlanOutcome:
        reports = {report.baseline.variant_id: report.baseline}
        reports.update({variant.variant_id: variant for variant in report.variants})

        old_ladder = (
            [row.variant_id for row in self._registry.ladder(job.model_id, job.profile_fingerprint)]
            if job.tighter
            else []
        )
        new_rungs = [vid for vid in report.ladder if vid not in old_ladder]
        ladder = old_ladder + new_rungs
        if not ladder:
            raise PlanningError(f"no variant fits profile {report.profile.name!r}: {report.reason}")

        records = []
        for variant_id, variant in reports.items():
            # put_file rehashes the file and rejects it if it differs from the report.
            self._artifacts.put_file(variant.onnx_path, expected_sha256=variant.sha256)
            manifest = build_manifest(variant, model_id=job.model_id)
            records.append(
                VariantRecord(
                    variant_id=variant_id,
                    recipe_json=recipe_json(variant.recipe),
                    sha256=variant.sha256,
                    size_bytes=variant.size_bytes,
                    accuracy=variant.accuracy,
                    latency_p95_ms=variant.latency_p95_ms,
                    host_latency_p95_ms=variant.host_latency_p95_ms,
                    peak_memory_mb=variant.peak_memory_mb,
                    manifest=manifest.SerializeToString(),
                    ladder_rank=ladder.index(variant_id) if variant_id in ladder else None,
                )
            )
        if job.tighter:
            # Keep the old rungs' stored records on the ladder at their ranks.
            kept = {record.variant_id for record in records}
            records.extend(
                _rerank(row, ladder.index(row.variant_id))
                for row in self._registry.ladder(job.model_id, job.profile_fingerprint)
                if row.variant_id not in kept
            )
        self._registry.store_variants(
            job.model_id, job.profile_fingerprint, records, plan_id=job.plan_id
        )
        self._registry.update_plan(
            job.plan_id, state=PlanState.DONE, reason=report.reason, report=report.to_dict()
        )
        logger.info(
            "plan %d stored %d variants; ladder %s", job.plan_id, len(records), ", ".join(ladder)
        )
        return PlanOutcome(
            job=job, ladder=tuple(ladder), new_rungs=tuple(new_rungs), reason=report.reason
        )


def _rerank(row: Any, rank: int) -> VariantRecord:
    return VariantRecord(
        variant_id=row.variant_id,
        recipe_json=row.recipe_json,
        sha256=row.sha256,
        size_bytes=row.size_bytes,
        accuracy=row.accuracy,
        latency_p95_ms=row.latency_p95_ms,
        host_latency_p95_ms=row.host_latency_p95_ms,
        peak_memory_mb=row.peak_memory_mb,
        manifest=row.manifest,
        ladder_rank=rank,
    )


# How long ``PlannerWorker.shutdown`` waits for an idle worker thread to end.
_IDLE_JOIN_S = 5.0


class PlannerWorker:
    """Runs planner and calibration tasks one at a time on a background thread.

    The thread is a daemon: a plan cannot be interrupted, and a shutdown must not wait
    minutes for one. A plan cut off that way stays RUNNING in the registry and is planned
    again at the next start.
    """

    def __init__(self) -> None:
        self._tasks: queue.Queue[tuple[str, Callable[[], Any], Future[Any]] | None]
        self._tasks = queue.Queue()
        self._closed = False
        # Tasks queued or running; a task that queues another keeps the count above zero.
        self._pending = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._thread = threading.Thread(target=self._loop, name="planner", daemon=True)
        self._thread.start()

    def submit(self, name: str, task: Callable[[], T]) -> Future[T]:
        """Queue ``task``; failures are logged with ``name`` and kept in the future."""
        future: Future[T] = Future()
        with self._lock:
            if self._closed:
                raise ControllerStateError(f"cannot queue {name}: the planner worker is shut down")
            self._pending += 1
            self._tasks.put((name, task, future))
        return future

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Wait until no task is queued or running; returns False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout_s)

    def shutdown(self, *, timeout_s: float = 0.0) -> bool:
        """Cancel queued tasks and wait up to ``timeout_s`` for the running one.

        Returns whether the worker thread ended in time.
        """
        with self._lock:
            self._closed = True
            while True:
                try:
                    item = self._tasks.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item[2].cancel()
                    self._pending -= 1
            self._idle.notify_all()
            self._tasks.put(None)
            # With the queue emptied, only a running task keeps the count above zero.
            idle = self._pending == 0
        # An idle thread only has the stop marker left to read, so it ends at once.
        self._thread.join(max(timeout_s, _IDLE_JOIN_S) if idle else timeout_s)
        return not self._thread.is_alive()

    def _loop(self) -> None:
        while (item := self._tasks.get()) is not None:
            name, task, future = item
            try:
                self._run(name, task, future)
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    @staticmethod
    def _run(name: str, task: Callable[[], Any], future: Future[Any]) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            result = task()
        # The worker must outlive any failing task; the error is logged and kept.
        except Exception as exc:
            logger.error("%s failed: %s", name, exc, exc_info=exc)
            future.set_exception(exc)
        else:
            future.set_result(result)
