"""The state file (serial, lineage, atomic 0600 writes) and its lock, without AWS."""

from __future__ import annotations

import json
import stat
import threading
import time
from pathlib import Path

import pytest

from servekit.cloudstate.store import (
    Resource,
    State,
    StateError,
    StateStore,
    StateWriter,
    force_unlock,
)
from servekit.inventory import cloud_addresses, load_fleet
from servekit.placement import NodeAddress

ROOT = Path(__file__).resolve().parents[2]


def instance(name: str, public: str | None, private: str) -> Resource:
    return Resource(
        type="aws_instance",
        name=name,
        id=f"i-{name}",
        region="us-east-1",
        attributes={"public_ip": public, "private_ip": private, "group": "a100"},
    )


def test_every_write_raises_the_serial_and_keeps_the_lineage(tmp_path: Path) -> None:
    store = StateStore("prod", tmp_path)
    created = store.load_or_create()
    assert created.serial == 1 and created.resources == []
    writer = StateWriter(store, created)
    writer.record(instance("a100-1", "54.0.0.2", "10.0.0.2"))
    writer.record(instance("a100-0", "54.0.0.1", "10.0.0.1"))
    writer.bump_generation("a100-1")
    loaded = store.load()
    assert loaded is not None
    assert loaded.serial == 4 and loaded.lineage == created.lineage
    assert [r.name for r in loaded.resources] == ["a100-0", "a100-1"]
    assert loaded.generations == {"a100-1": 1}
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    # no temporary files left; the known_hosts file is derived from the state on every save
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prod.json", "prod.known_hosts"]


def test_known_hosts_lists_exactly_the_pinned_keys_of_recorded_instances(tmp_path: Path) -> None:
    store = StateStore("prod", tmp_path)
    writer = StateWriter(store, store.load_or_create())
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJFzgips94nJNoR4QumiyqlJoSlZ48P+NVrd7zgD5k4T"
    pinned = writer.record(instance("a100-0", "54.0.0.1", "10.0.0.1"))
    writer.update(pinned, host_keys=[key])
    writer.record(instance("a100-1", "54.0.0.2", "10.0.0.2"))  # not pinned (--no-wait-ssh)
    assert store.known_hosts_path.read_text().splitlines() == [
        f"54.0.0.1 {key}",
        f"10.0.0.1 {key}",
    ]
    assert stat.S_IMODE(store.known_hosts_path.stat().st_mode) == 0o600
    writer.forget("aws_instance", "a100-0")  # destroyed: no longer trusted
    assert store.known_hosts_path.read_text() == ""
    text = store.path.read_text()
    assert "secret" not in text.lower() and "PRIVATE KEY" not in text


def test_a_write_over_another_lineage_or_a_newer_serial_is_refused(tmp_path: Path) -> None:
    store = StateStore("prod", tmp_path)
    mine = store.load_or_create()
    StateWriter(store, mine).record(instance("a100-0", None, "10.0.0.1"))  # serial 2 on disk
    with pytest.raises(StateError, match="written by someone else"):
        store.save(mine)  # still serial 1
    other = State(fleet="prod", lineage="another", serial=2)
    with pytest.raises(StateError, match="lineage"):
        store.save(other)
    loaded = store.load()
    assert loaded is not None and loaded.lineage == mine.lineage and loaded.serial == 2


def test_a_newer_format_is_refused(tmp_path: Path) -> None:
    store = StateStore("prod", tmp_path)
    store.path.write_text(json.dumps({"format_version": 9, "fleet": "prod", "lineage": "x"}))
    with pytest.raises(StateError, match=r"format 9.*upgrade servekit"):
        store.load()


def test_the_inventory_reads_addresses_from_the_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SERVEKIT_STATE_DIR", str(tmp_path))
    fleet = load_fleet(ROOT / "inventories" / "prod.py")
    assert cloud_addresses(fleet) == {}
    store = StateStore("prod")
    writer = StateWriter(store, store.load_or_create())
    writer.record(instance("a100-0", "54.0.0.1", "10.0.0.1"))
    writer.record(instance("a100-1", None, "10.0.0.2"))
    assert cloud_addresses(fleet) == {
        "a100-0": NodeAddress(public="54.0.0.1", private="10.0.0.1"),
        "a100-1": NodeAddress(public=None, private="10.0.0.2"),
    }


def test_a_held_lock_refuses_a_second_holder_and_names_the_first(tmp_path: Path) -> None:
    store = StateStore("prod", tmp_path)
    with store.lock("apply") as held:
        info = json.loads(store.lock_path.read_text())
        assert info["ID"] == held.id and info["Operation"] == "apply" and info["PID"] > 0
        refusal = rf"locked \(lock {held.id}: apply by .*wait for it"
        with pytest.raises(StateError, match=refusal), StateStore("prod", tmp_path).lock("x"):
            pass
        with pytest.raises(StateError, match="held by a running process"):
            force_unlock(store, held.id)
    assert not store.lock_path.exists()
    with store.lock("destroy"):
        pass


def test_lock_timeout_waits_for_the_holder(tmp_path: Path) -> None:
    store = StateStore("prod", tmp_path)
    ready = threading.Event()

    def hold_briefly() -> None:
        with store.lock("apply"):
            ready.set()
            time.sleep(0.5)

    thread = threading.Thread(target=hold_briefly)
    thread.start()
    ready.wait(5)
    started = time.monotonic()
    with StateStore("prod", tmp_path).lock("apply", timeout_s=10) as held:
        assert held.operation == "apply"
    assert 0.2 < time.monotonic() - started < 5
    thread.join()
