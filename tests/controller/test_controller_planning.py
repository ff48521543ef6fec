"""The planner service on a real (tiny) model: scikit-learn's digits and a small CNN."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from controller_support import AgentStream, make_sample, wait_for

from edgefleet.controller.models import EventKind, PlanState
from edgefleet.controller.planning import PlannerWorker, model_digest
from edgefleet.controller.service import Controller
from edgefleet.profiles import DeviceProfile
from edgefleet.protos.v1 import fleet_pb2, fleet_pb2_grpc


@pytest.fixture(scope="module")
def digits_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Return an ONNX export of an untrained DigitsCNN and the digits dataset file."""
    from edgefleet.compress import DigitsCNN, digits_dataset, export_onnx, save_dataset_npz

    root = tmp_path_factory.mktemp("digits")
    dataset = digits_dataset(seed=0)
    onnx_path = export_onnx(DigitsCNN(), dataset.x_val[:2], root / "digits.onnx")
    return onnx_path, save_dataset_npz(dataset, root / "digits.npz")


def test_model_digest_covers_files(tmp_path: Path) -> None:
    source = tmp_path / "model.py"
    data = tmp_path / "data.npz"
    source.write_text("def build(): ...\n")
    data.write_bytes(b"data")

    first = model_digest(f"{source}:build", data_path=data, weights_path=None)
    other_factory = model_digest(f"{source}:other", data_path=data, weights_path=None)
    data.write_bytes(b"changed")
    changed_data = model_digest(f"{source}:build", data_path=data, weights_path=None)

    assert len({first, other_factory, changed_data}) == 3


@pytest.mark.slow
def test_planner_stores_ladder_and_deploys(
    controller: Controller,
    stub: fleet_pb2_grpc.FleetServiceStub,
    profile: DeviceProfile,
    digits_files: tuple[Path, Path],
) -> None:
    onnx_path, data_path = digits_files
    model = controller.register_model(str(onnx_path), data_path=data_path)
    stub.Register(
        fleet_pb2.RegisterRequest(device_id="dev-1", profile=profile.to_proto()), timeout=10
    )
    stub.Register(
        fleet_pb2.RegisterRequest(device_id="dev-2", profile=profile.to_proto()), timeout=10
    )
    assert controller.wait_until_idle(300)

    plans = controller.registry.list_plans(model_id=model.id)
    ladder = controller.registry.ladder(model.id, profile.fingerprint)
    stream = AgentStream(stub)
    stream.hello("dev-1")
    command = next(stream.responses).command
    stream.close()

    # Devices that share a profile share one plan.
    assert [plan.state for plan in plans] == [PlanState.DONE]
    assert ladder, plans[0].reason
    for rung in ladder:
        assert controller.artifacts.verify(rung.sha256)
    manifest = command.deploy.manifest
    assert manifest.variant_id == ladder[0].variant_id
    assert manifest.model_id == model.id
    assert manifest.opset > 0
    assert manifest.inputs[0].type == fleet_pb2.TENSOR_TYPE_FLOAT32
    assert list(manifest.inputs[0].shape)[1:] == [1, 8, 8]
    expected = np.frombuffer(manifest.self_test.expected_output.data, dtype="<f4")
    assert expected.size > 0
    assert manifest.self_test.rtol > 0 or manifest.self_test.atol > 0
    assert controller.registry.list_events(kinds=[EventKind.PLANNED])


@pytest.mark.slow
def test_breach_on_last_rung_starts_recompression(
    controller: Controller,
    stub: fleet_pb2_grpc.FleetServiceStub,
    profile: DeviceProfile,
    digits_files: tuple[Path, Path],
) -> None:
    onnx_path, data_path = digits_files
    model = controller.register_model(str(onnx_path), data_path=data_path)
    stub.Register(
        fleet_pb2.RegisterRequest(device_id="dev-1", profile=profile.to_proto()), timeout=10
    )
    assert controller.wait_until_idle(300)
    ladder = [row.variant_id for row in controller.registry.ladder(model.id, profile.fingerprint)]
    stream = AgentStream(stub)
    stream.hello("dev-1")
    next(stream.responses)
    controller.deploy("dev-1", ladder[-1], reason="move to the cheapest rung")
    last = next(stream.responses).command.deploy
    stream.send(_active(last))
    wait_for(lambda: controller.registry.get_device("dev-1").current_variant_id == ladder[-1])

    for seq in range(3):
        sample = make_sample(seq=seq, variant_id=ladder[-1], latency_p95_ms=1000.0)
        stream.send(fleet_pb2.AgentMessage(telemetry=sample))
    wait_for(lambda: len(controller.registry.list_plans(model_id=model.id)) == 2)
    assert controller.wait_until_idle(300)
    stream.close()

    # An ONNX source has only int8 to offer, so the tighter plan has nothing to try and
    # fails without moving the device.
    plans = controller.registry.list_plans(model_id=model.id)
    assert [plan.state for plan in plans] == [PlanState.DONE, PlanState.FAILED]
    assert "no tighter recipes" in plans[1].reason
    recompressed = controller.registry.list_events(kinds=[EventKind.RECOMPRESSED])
    assert recompressed[0].device_id == "dev-1"
    assert len(recompressed[0].details["telemetry"]) == 3
    failed = controller.registry.list_events(kinds=[EventKind.PLAN_FAILED])
    assert failed[0].device_id == "dev-1"
    assert controller.registry.get_device("dev-1").current_variant_id == ladder[-1]


def _active(deploy: fleet_pb2.DeployCommand) -> fleet_pb2.AgentMessage:
    return fleet_pb2.AgentMessage(
        status=fleet_pb2.DeploymentStatus(
            device_id="dev-1",
            deployment_id=deploy.deployment_id,
            variant_id=deploy.manifest.variant_id,
            state=fleet_pb2.DEPLOYMENT_STATE_ACTIVE,
        )
    )


def test_register_model_rejects_missing_file(controller: Controller, tmp_path: Path) -> None:
    from edgefleet.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="not found"):
        controller.register_model(str(tmp_path / "nope.onnx"), data_path=tmp_path / "d.npz")
    with pytest.raises(InvalidInputError, match="factory"):
        controller.register_model(str(tmp_path / "model.py"), data_path=tmp_path / "d.npz")


@pytest.mark.slow
def test_newest_opset_model_gets_ladder(
    controller: Controller,
    stub: fleet_pb2_grpc.FleetServiceStub,
    profile: DeviceProfile,
    digits_files: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    import onnx
    from onnx import version_converter

    onnx_path, data_path = digits_files
    newest = onnx.defs.onnx_opset_version()
    converted = version_converter.convert_version(onnx.load(str(onnx_path)), newest)
    newest_path = tmp_path / f"digits_opset{newest}.onnx"
    onnx.save(converted, str(newest_path))

    model = controller.register_model(str(newest_path), data_path=data_path)
    stub.Register(
        fleet_pb2.RegisterRequest(device_id="dev-1", profile=profile.to_proto()), timeout=10
    )
    assert controller.wait_until_idle(300)

    plans = controller.registry.list_plans(model_id=model.id)
    assert [plan.state for plan in plans] == [PlanState.DONE], plans[0].reason
    assert controller.registry.ladder(model.id, profile.fingerprint)


def test_register_model_rejects_external_data(
    controller: Controller, digits_files: tuple[Path, Path], tmp_path: Path
) -> None:
    import onnx

    from edgefleet.errors import InvalidInputError

    onnx_path, data_path = digits_files
    split = tmp_path / "split.onnx"
    onnx.save(
        onnx.load(str(onnx_path)),
        str(split),
        save_as_external_data=True,
        location="split.onnx.data",
        size_threshold=0,
    )

    with pytest.raises(InvalidInputError) as caught:
        controller.register_model(str(split), data_path=data_path)

    message = str(caught.value)
    assert "keeps its weights in a separate file (split.onnx.data)" in message
    assert "save_as_external_data=False" in message
    assert controller.registry.active_model() is None


@pytest.fixture(scope="module")
def torch_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Path]:
    """Return a factory spec, trained weights and data for a DigitsCNN.

    The default widths make fp32 several times slower than the pruned int8 variants, so the
    tighter plan's variants beat fp32 on latency despite timing noise on a busy host.
    """
    import torch

    from edgefleet.compress import digits_dataset, save_dataset_npz, train_digits_cnn

    root = tmp_path_factory.mktemp("digits-torch")
    factory = root / "digits_cnn.py"
    factory.write_text(
        "from edgefleet.compress.digits import DigitsCNN\n\n\n"
        "def build():\n    return DigitsCNN()\n"
    )
    dataset = digits_dataset(seed=0)
    model = train_digits_cnn(dataset, epochs=3, seed=0)
    weights = root / "digits_cnn.pt"
    torch.save(model.state_dict(), weights)
    return f"{factory}:build", weights, save_dataset_npz(dataset, root / "digits.npz")


@pytest.mark.slow
def test_recompression_adds_rung_and_steps_device_down(
    controller: Controller,
    stub: fleet_pb2_grpc.FleetServiceStub,
    profile: DeviceProfile,
    torch_files: tuple[str, Path, Path],
) -> None:
    spec, weights, data_path = torch_files
    model = controller.register_model(spec, data_path=data_path, weights_path=weights)
    stub.Register(
        fleet_pb2.RegisterRequest(device_id="dev-1", profile=profile.to_proto()), timeout=10
    )
    assert controller.wait_until_idle(300)
    ladder = [row.variant_id for row in controller.registry.ladder(model.id, profile.fingerprint)]
    # The tighter plan prunes and fine-tunes, which outlasts the default stream deadline.
    stream = AgentStream(stub, timeout_s=300)
    stream.hello("dev-1")
    next(stream.responses)
    controller.deploy("dev-1", ladder[-1], reason="move to the cheapest rung")
    stream.send(_active(next(stream.responses).command.deploy))
    wait_for(lambda: controller.registry.get_device("dev-1").current_variant_id == ladder[-1])

    for seq in range(3):
        sample = make_sample(seq=seq, variant_id=ladder[-1], latency_p95_ms=1000.0)
        stream.send(fleet_pb2.AgentMessage(telemetry=sample))
    wait_for(lambda: len(controller.registry.list_plans(model_id=model.id)) == 2)
    assert controller.wait_until_idle(300)
    command = next(stream.responses).command
    stream.close()

    plans = controller.registry.list_plans(model_id=model.id)
    assert [plan.state for plan in plans] == [PlanState.DONE, PlanState.DONE]
    new_ladder = controller.registry.ladder(model.id, profile.fingerprint)
    new_ids = [row.variant_id for row in new_ladder]
    target = command.deploy.manifest.variant_id
    assert target not in ladder, "the device must move to a variant the tighter plan added"
    assert target in new_ids
    stepped = controller.registry.list_events(kinds=[EventKind.STEPPED_DOWN])
    assert stepped and stepped[-1].to_variant == target


def test_worker_shutdown_idle_ends_at_once() -> None:
    worker = PlannerWorker()

    assert worker.shutdown(timeout_s=0) is True


def test_worker_shutdown_reports_running_task() -> None:
    worker = PlannerWorker()
    release = threading.Event()
    started = threading.Event()

    def task() -> None:
        started.set()
        release.wait(10)

    worker.submit("a long plan", task)
    started.wait(5)
    try:
        assert worker.shutdown(timeout_s=0) is False
    finally:
        release.set()
