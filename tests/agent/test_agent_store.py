from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from edgefleet.agent.store import MAX_APPLIED_COMMAND_IDS, AgentStore, UpdateRecord
from edgefleet.agent.update import UpdateState

SHA_A = "a" * 64
SHA_B = "b" * 64
SHA_C = "c" * 64


def test_store_commit_moves_current_to_previous(tmp_path):
    store = AgentStore(tmp_path)

    store.commit(SHA_A)
    store.commit(SHA_B)

    assert store.state.current == SHA_B
    assert store.state.previous == SHA_A
    reopened = AgentStore(tmp_path)
    assert reopened.state.current == SHA_B
    assert reopened.state.previous == SHA_A


def test_store_commit_of_current_keeps_previous(tmp_path):
    store = AgentStore(tmp_path)
    store.commit(SHA_A)
    store.commit(SHA_B)

    store.commit(SHA_B)

    assert store.state.previous == SHA_A


def test_store_roll_back_restores_previous(tmp_path):
    store = AgentStore(tmp_path)
    store.commit(SHA_A)
    store.commit(SHA_B)

    store.roll_back()

    assert store.state.current == SHA_A
    assert store.state.previous is None


def test_store_remembers_applied_commands_bounded(tmp_path):
    store = AgentStore(tmp_path)
    for index in range(MAX_APPLIED_COMMAND_IDS + 10):
        store.mark_applied(f"command-{index}")

    reopened = AgentStore(tmp_path)
    assert reopened.is_applied(f"command-{MAX_APPLIED_COMMAND_IDS + 9}")
    assert not reopened.is_applied("command-0")
    assert len(reopened.state.applied_command_ids) == MAX_APPLIED_COMMAND_IDS


def test_store_persists_update_record(tmp_path):
    store = AgentStore(tmp_path)
    record = UpdateRecord("c1", "d1", "v1", SHA_C, UpdateState.LOADING, attempts=2)

    store.record_update(record)

    assert AgentStore(tmp_path).state.update == record


def test_store_state_file_is_replaced_atomically(tmp_path):
    store = AgentStore(tmp_path)
    store.commit(SHA_A)

    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []
    assert json.loads((tmp_path / "state.json").read_text())["current"] == SHA_A


@pytest.mark.parametrize(
    "content", ["{not json", '{"version": 99}', '{"version": 1, "current": 5}']
)
def test_store_ignores_corrupt_state_file(tmp_path, content):
    (tmp_path / "state.json").write_text(content)

    store = AgentStore(tmp_path)

    assert store.state.current is None


@pytest.mark.parametrize("content", ["{not json", '{"version": 1, "current": 5}', ""])
def test_store_corrupt_state_keeps_committed_model(tmp_path, affine_variant, content):
    store = AgentStore(tmp_path / "state")
    old_path, old = affine_variant(scale=1.0)
    new_path, new = affine_variant(scale=2.0)
    store.install(old, old_path)
    store.commit(old.sha256)
    store.install(new, new_path)
    store.commit(new.sha256)
    (tmp_path / "state" / "state.json").write_text(content)

    recovered = AgentStore(tmp_path / "state").state

    assert recovered.current == new.sha256
    assert recovered.previous == old.sha256


def test_store_corrupt_state_keeps_model_without_manifest(tmp_path, affine_variant):
    store = AgentStore(tmp_path / "state")
    old_path, old = affine_variant(scale=1.0)
    new_path, new = affine_variant(scale=2.0)
    store.install(old, old_path)
    store.commit(old.sha256)
    store.install(new, new_path)
    store.commit(new.sha256)
    (tmp_path / "state" / "models" / f"{new.sha256}.json").unlink()
    (tmp_path / "state" / "state.json").write_text("{torn")

    recovered = AgentStore(tmp_path / "state").state

    assert recovered.current == new.sha256
    assert recovered.previous == old.sha256


def test_store_corrupt_state_and_committed_uses_newest(tmp_path, affine_variant):
    store = AgentStore(tmp_path / "state")
    old_path, old = affine_variant(scale=1.0)
    new_path, new = affine_variant(scale=2.0)
    store.install(old, old_path)
    store.commit(old.sha256)
    os.utime(store.model_path(old.sha256), (1_000_000, 1_000_000))
    store.install(new, new_path)
    store.commit(new.sha256)
    (tmp_path / "state" / "state.json").write_text("{torn")
    (tmp_path / "state" / "committed.json").write_text("{torn")

    recovered = AgentStore(tmp_path / "state").state

    assert recovered.current == new.sha256
    assert recovered.previous == old.sha256


def test_store_install_and_remove_unused(tmp_path, affine_variant):
    store = AgentStore(tmp_path / "state")
    first_path, first = affine_variant(scale=1.0)
    second_path, second = affine_variant(scale=2.0)
    third_path, third = affine_variant(scale=3.0)
    for path, manifest in ((first_path, first), (second_path, second), (third_path, third)):
        store.install(manifest, path)
        store.commit(manifest.sha256)

    removed = store.remove_unused_models()

    assert removed == [first.sha256]
    assert not store.has_model(first.sha256)
    assert store.has_model(second.sha256)
    assert store.load_manifest(third.sha256) == third


def test_store_claim_rejects_second_process(tmp_path):
    first = AgentStore(tmp_path)
    first.claim()
    script = (
        "import sys\n"
        "from edgefleet.agent.store import AgentStore\n"
        "from edgefleet.agent.errors import StorageError\n"
        "try:\n"
        f"    AgentStore({str(tmp_path)!r}).claim()\n"
        "except StorageError as exc:\n"
        "    print(exc)\n"
        "    sys.exit(3)\n"
    )
    try:
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)

        assert result.returncode == 3
        assert "in use by another agent" in result.stdout
    finally:
        first.release()

    after = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert after.returncode == 0, after.stdout
