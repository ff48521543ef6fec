"""Model serving with onnxruntime: load, self-test, atomic swap and thread-safe inference.

A new model is loaded into its own ``InferenceSession`` and must pass the manifest's
self-test before ``activate`` swaps it in under a lock. Until then, and whenever loading
or the self-test fails, the old model keeps serving. ``InferenceSession.run`` is safe to
call from several threads, so requests only hold the lock long enough to pick a session.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from edgefleet.agent.errors import InferenceInputError, ModelLoadError, NoModelError, SelfTestError
from edgefleet.agent.latency import LatencyRecorder
from edgefleet.agent.tensors import dtype_for_ort_type, dtype_for_tensor_type, tensor_to_array
from edgefleet.errors import InvalidInputError
from edgefleet.protos.v1 import fleet_pb2

__all__ = [
    "HealthReport",
    "InferenceResult",
    "LoadedModel",
    "ModelRuntime",
    "check_health",
    "create_session",
]

logger = logging.getLogger(__name__)

# onnxruntime's Python exceptions derive from Exception directly, not from RuntimeError.
ORT_ERRORS: tuple[type[Exception], ...] = (
    ort_state.Fail,
    ort_state.InvalidArgument,
    ort_state.InvalidGraph,
    ort_state.InvalidProtobuf,
    ort_state.NoSuchFile,
    ort_state.NotImplemented,
    ort_state.RuntimeException,
    RuntimeError,
)


@dataclasses.dataclass(frozen=True, slots=True)
class InputSpec:
    """One model input as onnxruntime reports it; ``None`` marks a dynamic dimension."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]

    def describe_shape(self) -> str:
        return "[" + ", ".join("N" if dim is None else str(dim) for dim in self.shape) + "]"


@dataclasses.dataclass(frozen=True, slots=True)
class LoadedModel:
    """A model that loaded and passed its self-test, ready to serve."""

    manifest: fleet_pb2.VariantManifest
    path: Path
    session: ort.InferenceSession
    inputs: tuple[InputSpec, ...]
    output_names: tuple[str, ...]
    # False for a committed model restored after its manifest file was lost: the manifest
    # then holds only the digest, and the model served without its self-test.
    has_manifest: bool = True

    @property
    def variant_id(self) -> str:
        return self.manifest.variant_id


@dataclasses.dataclass(frozen=True, slots=True)
class InferenceResult:
    outputs: dict[str, np.ndarray]
    variant_id: str
    latency_ms: float


def create_session(path: Path, *, threads: int) -> ort.InferenceSession:
    """Open ``path`` in onnxruntime the way the device serves it; raises ``ModelLoadError``."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except ORT_ERRORS as exc:
        raise ModelLoadError(f"onnxruntime cannot load {path}: {exc}") from exc


class ModelRuntime:
    """The serving model and the one before it; see the module docstring."""

    def __init__(self, *, threads: int, latency: LatencyRecorder | None = None) -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.threads = threads
        self.latency = latency if latency is not None else LatencyRecorder()
        self._lock = threading.Lock()
        self._current: LoadedModel | None = None
        # NOTE: the previous session stays in memory so that a rollback needs no reload.
        # Serving therefore needs room for two models after the first swap.
        self._previous: LoadedModel | None = None

    @property
    def current(self) -> LoadedModel | None:
        with self._lock:
            return self._current

    @property
    def variant_id(self) -> str:
        current = self.current
        return current.variant_id if current else ""

    def prepare(self, path: Path, manifest: fleet_pb2.VariantManifest) -> LoadedModel:
        """Load ``path`` and run the manifest's self-test without touching the serving model.

        Raises ``ModelLoadError`` if onnxruntime rejects the file or its inputs differ from
        the manifest, and ``SelfTestError`` if the output is outside the tolerances.
        """
        session = create_session(path, threads=self.threads)
        model = LoadedModel(
            manifest=manifest,
            path=path,
            session=session,
            inputs=_input_specs(session),
            output_names=tuple(output.name for output in session.get_outputs()),
        )
        _check_manifest_matches(model)
        _run_self_test(model)
        return model

    def load_without_manifest(self, path: Path, sha256: str) -> LoadedModel:
        """Load and activate a committed model whose manifest file is lost or damaged.

        The caller must have checked the file against the digest that a verified manifest
        named at install time. Without the manifest there is no variant id, no declared
        inputs and no self-test to run.
        """
        session = create_session(path, threads=self.threads)
        model = LoadedModel(
            manifest=fleet_pb2.VariantManifest(sha256=sha256, size_bytes=path.stat().st_size),
            path=path,
            session=session,
            inputs=_input_specs(session),
            output_names=tuple(output.name for output in session.get_outputs()),
            has_manifest=False,
        )
        self.activate(model)
        return model

    def activate(self, model: LoadedModel) -> LoadedModel | None:
        """Serve ``model`` from the next request on; return the model it replaced."""
        with self._lock:
            replaced = self._current
            if replaced is not None and replaced.path != model.path:
                self._previous = replaced
            self._current = model
        logger.info("serving variant %s from %s", model.variant_id, model.path)
        return replaced

    def load(self, path: Path, manifest: fleet_pb2.VariantManifest) -> LoadedModel:
        """Prepare and activate in one step; on error the old model keeps serving."""
        model = self.prepare(path, manifest)
        self.activate(model)
        return model

    def roll_back(self) -> LoadedModel:
        """Serve the previous model again; raises ``NoModelError`` if there is none."""
        with self._lock:
            if self._previous is None:
                raise NoModelError("no previous model to roll back to")
            self._current, self._previous = self._previous, None
            restored = self._current
        logger.warning("rolled back to variant %s", restored.variant_id)
        return restored

    def restore(self, model: LoadedModel | None) -> None:
        """Serve ``model`` again (``None`` serves nothing); the replaced model is dropped."""
        with self._lock:
            self._current, self._previous = model, None
        if model is None:
            logger.warning("no model serves: there is no committed model to restore")
        else:
            logger.warning("restored variant %s", model.variant_id)

    def infer(self, inputs: Mapping[str, np.ndarray]) -> InferenceResult:
        """Run the serving model; raises ``NoModelError`` or ``InferenceInputError``."""
        model = self.current
        if model is None:
            raise NoModelError("no model is active yet; wait for a deployment")
        feeds = _prepare_feeds(model, inputs)

        started = time.perf_counter()
        try:
            values = model.session.run(None, feeds)
        except ORT_ERRORS as exc:
            # Shapes and types were checked above, so this is a value the graph rejects
            # (for example an index out of range in a Gather).
            raise InferenceInputError(f"onnxruntime rejected the inputs: {exc}") from exc
        latency_ms = (time.perf_counter() - started) * 1000.0
        # Budgets are the p95 of one inference, so a batched request counts as its
        # per-sample latency; otherwise large batches would read as budget breaches.
        self.latency.record(latency_ms / _batch_rows(feeds))

        outputs = dict(zip(model.output_names, values, strict=True))
        return InferenceResult(outputs=outputs, variant_id=model.variant_id, latency_ms=latency_ms)


def _batch_rows(feeds: Mapping[str, np.ndarray]) -> int:
    """Return the leading dimension shared by the inputs, or 1 for scalar inputs."""
    first = next(iter(feeds.values()), None)
    if first is None or first.ndim == 0 or first.shape[0] == 0:
        return 1
    return int(first.shape[0])


def _input_specs(session: ort.InferenceSession) -> tuple[InputSpec, ...]:
    specs = []
    for node in session.get_inputs():
        try:
            dtype = dtype_for_ort_type(node.type)
        except InvalidInputError as exc:
            raise ModelLoadError(f"model input {node.name!r}: {exc}") from exc
        # Symbolic dimensions ("batch") and unknown ones (None) both accept any size.
        shape = tuple(dim if isinstance(dim, int) and dim >= 0 else None for dim in node.shape)
        specs.append(InputSpec(node.name, dtype, shape))
    return tuple(specs)


def _check_manifest_matches(model: LoadedModel) -> None:
    declared = {spec.name: spec for spec in model.manifest.inputs}
    actual = {spec.name: spec for spec in model.inputs}
    if declared and set(declared) != set(actual):
        raise ModelLoadError(
            f"variant {model.variant_id}: manifest inputs {sorted(declared)} differ from the "
            f"model's inputs {sorted(actual)}"
        )
    for name, spec in declared.items():
        try:
            dtype = dtype_for_tensor_type(spec.type)
        except InvalidInputError as exc:
            raise ModelLoadError(f"variant {model.variant_id}: input {name!r}: {exc}") from exc
        if dtype.newbyteorder("=") != actual[name].dtype:
            raise ModelLoadError(
                f"variant {model.variant_id}: input {name!r} is {actual[name].dtype.name} in "
                f"the model but {dtype.name} in the manifest"
            )


@dataclasses.dataclass(frozen=True, slots=True)
class HealthReport:
    """Result of a health check: per-row latency of the self-test input over ``runs`` runs."""

    runs: int
    latency_p95_ms: float
    latency_budget_ms: float

    @property
    def within_budget(self) -> bool:
        return self.latency_p95_ms <= self.latency_budget_ms


# Runs of the self-test input that the health check times. 20 runs put the p95 on the
# second-slowest run, enough to catch a model that is several times over its budget.
HEALTH_CHECK_RUNS = 20


def check_health(
    model: LoadedModel, *, latency_budget_ms: float, runs: int = HEALTH_CHECK_RUNS
) -> HealthReport:
    """Run the self-test on ``model`` and time it against the device's latency budget.

    Raises ``SelfTestError`` when the outputs differ from the manifest's expected output.
    A p95 latency over the budget is reported in ``HealthReport.within_budget``, because
    whether it should fail the model depends on what the device would serve instead.
    """
    feeds = _run_self_test(model)
    rows = _batch_rows(feeds)
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        try:
            model.session.run([model.output_names[0]], feeds)
        except ORT_ERRORS as exc:
            raise SelfTestError(
                f"variant {model.variant_id}: health check run failed: {exc}"
            ) from exc
        timings.append((time.perf_counter() - started) * 1000.0 / rows)
    report = HealthReport(
        runs=runs,
        latency_p95_ms=float(np.percentile(timings, 95)),
        latency_budget_ms=latency_budget_ms,
    )
    return report


def _run_self_test(model: LoadedModel) -> dict[str, np.ndarray]:
    """Check the manifest's self-test output; returns the feeds it used."""
    self_test = model.manifest.self_test
    if not model.manifest.HasField("self_test") or not self_test.HasField("input"):
        raise SelfTestError(f"variant {model.variant_id}: the manifest has no self-test")
    try:
        test_input = tensor_to_array(self_test.input)
        expected = tensor_to_array(self_test.expected_output)
    except InvalidInputError as exc:
        raise SelfTestError(f"variant {model.variant_id}: invalid self-test tensor: {exc}") from exc

    first = model.inputs[0]
    try:
        feeds = _prepare_feeds(model, {first.name: test_input})
        actual = model.session.run([model.output_names[0]], feeds)[0]
    except (InferenceInputError, *ORT_ERRORS) as exc:
        raise SelfTestError(f"variant {model.variant_id}: self-test input failed: {exc}") from exc

    if actual.shape != expected.shape:
        raise SelfTestError(
            f"variant {model.variant_id}: self-test output has shape {list(actual.shape)}, "
            f"expected {list(expected.shape)}"
        )
    rtol, atol = self_test.rtol, self_test.atol
    if not np.allclose(actual, expected, rtol=rtol, atol=atol):
        worst = float(np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64))))
        raise SelfTestError(
            f"variant {model.variant_id}: self-test output differs from the expected output "
            f"by up to {worst:.6g} (rtol={rtol}, atol={atol})"
        )
    return feeds


def _prepare_feeds(model: LoadedModel, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    expected = {spec.name for spec in model.inputs}
    unknown = sorted(set(inputs) - expected)
    if unknown:
        raise InferenceInputError(f"unknown input(s) {unknown}; the model takes {sorted(expected)}")
    feeds = {}
    for spec in model.inputs:
        if spec.name not in inputs:
            raise InferenceInputError(
                f"missing input {spec.name!r} of shape {spec.describe_shape()} ({spec.dtype.name})"
            )
        feeds[spec.name] = _convert_input(spec, np.asarray(inputs[spec.name]))
    return feeds


def _convert_input(spec: InputSpec, value: np.ndarray) -> np.ndarray:
    if len(value.shape) != len(spec.shape) or any(
        want is not None and want != got for want, got in zip(spec.shape, value.shape, strict=True)
    ):
        raise InferenceInputError(
            f"input {spec.name!r} has shape {list(value.shape)}, expected {spec.describe_shape()}"
        )
    if value.dtype == spec.dtype:
        return value
    # JSON numbers arrive as int64 or float64. Only casts that keep every value's kind are
    # made, so a fractional number never becomes an integer input silently.
    if spec.dtype.kind in "iu" and value.dtype.kind in "iu" and value.size:
        limits = np.iinfo(spec.dtype)
        if value.min() < limits.min or value.max() > limits.max:
            raise InferenceInputError(
                f"input {spec.name!r} has values outside the {spec.dtype.name} range "
                f"[{limits.min}, {limits.max}]"
            )
    if value.dtype.kind in "iub" or (value.dtype.kind == "f" and spec.dtype.kind == "f"):
        return value.astype(spec.dtype)
    raise InferenceInputError(
        f"input {spec.name!r} has type {value.dtype.name}, expected {spec.dtype.name}"
    )
