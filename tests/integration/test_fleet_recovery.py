"""A real controller and real agent processes: a device that lost its model, or whose
deployment failed on install, gets its desired variant again without an operator."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import shutil
import time

import pytest
from fleet_support import fleet_config, wait_for, write_profile
from ladder_support import linear_variant, store_ladder
from rollout_fleet_support import store_broken_variant

from edgefleet.agent.store import AgentStore
from edgefleet.controller.models import DeploymentState, EventKind
from edgefleet.controller.service import Controller
from edgefleet.profiles import load_profile
from edgefleet.protos.mqtt import BrokerSettings

pytestmark = pytest.mark.slow

FEATURES = 64


def serving_variant(agent) -> str | None:
    health = agent.health()
    return health.get("variant_id") if health else None


def deploy_reasons(controller: Controller, device_id: str) -> list[str]:
    events = controller.registry.list_events(
        device_id=device_id, kinds=[EventKind.DEPLOY_REQUESTED]
    )
    return [event.reason for event in events]


def assert_installed_verified(agent, sha256: str) -> None:
    store = AgentStore(agent.state_dir)
    assert store.state.current == sha256
    data = store.model_path(sha256).read_bytes()
    assert hashlib.sha256(data).hexdigest() == sha256


@pytest.mark.parametrize("transport", ["grpc", "mqtt"])
def test_truncated_model_redeployed_after_restart(
    start_controller, start_agent, tmp_path, request, transport
):
    fleet = start_controller(fleet_config())
    controller = fleet.controller
    agent_options: dict[str, object] = {"port": fleet.port}
    if transport == "mqtt":
        broker = request.getfixturevalue("broker")
        controller.serve_mqtt(BrokerSettings.from_options(broker.url))
        agent_options = {"broker": broker.url}
    profile = write_profile(tmp_path / "shared.toml", "recovery-board")
    manifest = store_ladder(controller, load_profile(profile), *linear_variant(FEATURES))
    agent = start_agent("pi-lost", profile_name="recovery-board", **agent_options)
    wait_for(lambda: serving_variant(agent) == manifest.variant_id, timeout_s=60, what="deploy")
    wait_for(
        lambda: controller.registry.get_device("pi-lost").current_variant_id,
        timeout_s=20,
        what="the ACTIVE report",
    )
    assert agent.stop() == 0

    # A power cut truncated the installed file; the file name is still its sha256.
    model_path = AgentStore(agent.state_dir).model_path(manifest.sha256)
    model_path.write_bytes(model_path.read_bytes()[:100])
    restarted = start_agent("pi-lost", profile_name="recovery-board", **agent_options)

    wait_for(
        lambda: serving_variant(restarted) == manifest.variant_id,
        timeout_s=60,
        what="the variant deployed again",
    )
    assert f"failed to restore model {manifest.sha256}: size mismatch" in restarted.log()
    assert_installed_verified(restarted, manifest.sha256)
    reasons = deploy_reasons(controller, "pi-lost")
    assert len(reasons) == 2
    assert "serving no variant" in reasons[-1]
    assert f"desired variant {manifest.variant_id}" in reasons[-1]


def test_failed_install_deployed_again(start_controller, start_agent, tmp_path):
    config = dataclasses.replace(fleet_config(), redeploy_initial_s=1.0, redeploy_max_s=4.0)
    fleet = start_controller(config)
    controller = fleet.controller
    profile = write_profile(tmp_path / "shared.toml", "retry-board")
    agent = start_agent("pi-retry", fleet.port, profile_name="retry-board")
    wait_for(
        lambda: controller.sessions.is_connected("pi-retry"),
        timeout_s=60,
        what="the session",
    )

    # models/ replaced by a file: every install fails, as on a read-only or immutable folder.
    models_dir = agent.state_dir / "models"
    shutil.rmtree(models_dir)
    models_dir.write_bytes(b"")
    manifest = store_ladder(controller, load_profile(profile), *linear_variant(FEATURES))
    controller.deploy("pi-retry", manifest.variant_id, reason="first deployment")
    wait_for(
        lambda: controller.registry.latest_deployment("pi-retry").state is DeploymentState.FAILED,
        timeout_s=30,
        what="the failed deployment",
    )
    models_dir.unlink()
    models_dir.mkdir()

    wait_for(
        lambda: serving_variant(agent) == manifest.variant_id,
        timeout_s=30,
        what="the deployment sent again",
    )
    assert_installed_verified(agent, manifest.sha256)
    reasons = deploy_reasons(controller, "pi-retry")
    later = reasons[reasons.index("first deployment") + 1 :]
    # The retry after its backoff, or placement of the device that serves nothing, whichever
    # comes first; test_controller_redeploy.py covers the retry schedule on its own.
    assert later, "no deployment was sent again"
    assert any(re.match(r"attempt \d of 5: deployment ", r) for r in later) or any(
        r.startswith("initial deployment") for r in later
    ), later
    assert controller.registry.latest_deployment("pi-retry").state is DeploymentState.ACTIVE


def test_variant_failing_its_self_test_not_sent_again(start_controller, start_agent, tmp_path):
    config = dataclasses.replace(fleet_config(), redeploy_initial_s=0.5, redeploy_max_s=1.0)
    fleet = start_controller(config)
    controller = fleet.controller
    profile = write_profile(tmp_path / "shared.toml", "selftest-board")
    agent = start_agent("pi-selftest", fleet.port, profile_name="selftest-board")
    wait_for(
        lambda: controller.sessions.is_connected("pi-selftest"),
        timeout_s=60,
        what="the session",
    )
    manifest = store_ladder(controller, load_profile(profile), *linear_variant(FEATURES))
    controller.deploy("pi-selftest", manifest.variant_id, reason="first deployment")
    wait_for(
        lambda: serving_variant(agent) == manifest.variant_id,
        timeout_s=60,
        what="the first deployment",
    )
    fingerprint = controller.registry.get_device("pi-selftest").profile_fingerprint
    broken = store_broken_variant(controller, manifest.model_id, fingerprint, manifest.variant_id)

    failed = controller.deploy("pi-selftest", broken, reason="broken export")
    wait_for(
        lambda: (
            controller.registry.latest_deployment("pi-selftest").state is DeploymentState.FAILED
        ),
        timeout_s=30,
        what="the failed deployment",
    )
    # Several retry delays pass, and no deployment follows the failed one.
    time.sleep(3.0)

    assert controller.registry.latest_deployment("pi-selftest").id == failed.id
    assert "self-test output differs" in controller.registry.latest_deployment("pi-selftest").reason
    alerts = controller.registry.list_events(device_id="pi-selftest", kinds=[EventKind.ALERT])
    assert [alert.details["failed_in"] for alert in alerts] == ["loading"]
    assert "not sending it again" in alerts[0].reason
    assert serving_variant(agent) == manifest.variant_id
    assert_installed_verified(agent, manifest.sha256)


def test_damaged_manifest_restored_by_redeploy(start_controller, start_agent, tmp_path):
    fleet = start_controller(fleet_config())
    controller = fleet.controller
    profile = write_profile(tmp_path / "shared.toml", "recovery-board")
    manifest = store_ladder(controller, load_profile(profile), *linear_variant(FEATURES))
    agent = start_agent("pi-manifest", profile_name="recovery-board", port=fleet.port)
    wait_for(lambda: serving_variant(agent) == manifest.variant_id, timeout_s=60, what="deploy")
    wait_for(
        lambda: controller.registry.get_device("pi-manifest").current_variant_id,
        timeout_s=20,
        what="the ACTIVE report",
    )
    assert agent.stop() == 0

    manifest_path = agent.state_dir / "models" / f"{manifest.sha256}.json"
    manifest_path.write_text("{bad")
    restarted = start_agent("pi-manifest", profile_name="recovery-board", port=fleet.port)

    wait_for(
        lambda: serving_variant(restarted) == manifest.variant_id,
        timeout_s=60,
        what="the variant deployed again",
    )
    log = restarted.log()
    assert f"cannot read manifest {manifest_path}" in log
    assert "still matches its committed sha256" in log
    assert AgentStore(restarted.state_dir).load_manifest(manifest.sha256).sha256 == manifest.sha256
    assert_installed_verified(restarted, manifest.sha256)
    reasons = deploy_reasons(controller, "pi-manifest")
    assert len(reasons) == 2
    assert "serving no variant" in reasons[-1]
