"""Spec computation and generations, on a real SQLite file through the real store."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlite_utils import Database

from edge_server import specs
from edge_server.store import connect
from edge_server.store import devices as devices_store
from edge_server.store import groups as groups_store
from edge_server.store import state as state_store
from edge_server.store.devices import DeviceWrite
from edge_server.store.migrations import migrate
from registration.desired import ConfigFile, K3sSpec, OsSpec, SpecPatch


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = connect(tmp_path / "c.db")
    migrate(database)
    return database


def add_device(db: Database, device_id: str, labels: dict[str, str]) -> None:
    devices_store.upsert(
        db,
        DeviceWrite(
            id=device_id,
            name=device_id,
            machine_id=f"dmi:{device_id}",
            dmi_uuid=device_id,
            public_key_sha256="k",
            group_name="default",
            labels_local=labels,
            labels_token={},
            facts={},
            agent_version="t",
            protocol_version=1,
            token_id="t",
        ),
        operator={},
    )


def set_group(db: Database, name: str, selector: str, priority: int, patch: SpecPatch) -> None:
    if groups_store.get(db, name) is None:
        groups_store.create(db, name, selector, priority)
    groups_store.update(
        db, name, selector=selector, priority=priority, spec=patch.model_dump(exclude_none=True)
    )


def generation(db: Database, device_id: str) -> int:
    row = state_store.get(db, device_id)
    assert row is not None
    return int(row["generation"])


def test_higher_priority_wins_field_by_field_and_override_wins_last(db: Database) -> None:
    add_device(db, "d1", {"site": "eu", "tier": "prod"})
    set_group(
        db,
        "base",
        "",
        0,
        SpecPatch(
            os=OsSpec(version="1.0", allow_downgrade=True),
            k3s=K3sSpec(version="v1.30"),
            config=[
                ConfigFile(path="/etc/a", content="base"),
                ConfigFile(path="/etc/b", content="b"),
            ],
        ),
    )
    set_group(
        db,
        "eu",
        "site=eu",
        10,
        SpecPatch(
            os=OsSpec(version="2.0"),
            config=[ConfigFile(path="/etc/a", content="eu", mode=0o600)],
        ),
    )
    set_group(db, "lab", "site=eu,tier=lab", 99, SpecPatch(os=OsSpec(version="9.9")))
    specs.recompute(db)
    row = state_store.get(db, "d1")
    assert row is not None
    assert row["groups"] == ["base", "eu"]
    spec = row["spec"]
    assert spec["os"] == {"version": "2.0", "allow_downgrade": True, "image": None}
    # The role is the cluster's: the group's only device is its server node.
    assert spec["k3s"]["version"] == "v1.30" and spec["k3s"]["role"] == "server"
    assert [(f["path"], f["content"], f["mode"]) for f in spec["config"]] == [
        ("/etc/a", "eu", 0o600),
        ("/etc/b", "b", 0o644),
    ]
    state_store.set_override(
        db, "d1", SpecPatch(os=OsSpec(version="3.0")).model_dump(exclude_none=True)
    )
    specs.recompute(db, ["d1"])
    row = state_store.get(db, "d1")
    assert row is not None and row["spec"]["os"]["version"] == "3.0"


def test_generation_rises_only_when_the_devices_spec_changes(db: Database) -> None:
    add_device(db, "eu1", {"site": "eu"})
    add_device(db, "us1", {"site": "us"})
    changes = specs.recompute(db)
    assert {c.device_id for c in changes} == {"eu1", "us1"}
    assert generation(db, "eu1") == 1
    assert specs.recompute(db) == []
    set_group(db, "eu", "site=eu", 0, SpecPatch(os=OsSpec(version="2")))
    changes = specs.recompute(db)
    assert [c.device_id for c in changes] == ["eu1"]
    assert generation(db, "eu1") == 2 and generation(db, "us1") == 1
    # Setting the same spec again changes nothing.
    set_group(db, "eu", "site=eu", 0, SpecPatch(os=OsSpec(version="2")))
    assert specs.recompute(db) == []
    # A label change moves a device into the group: its spec and generation change.
    devices_store.set_operator_labels(db, "us1", {"site": "eu"})
    assert [c.device_id for c in specs.recompute(db, ["us1"])] == ["us1"]
    assert generation(db, "us1") == 2
    row = state_store.get(db, "us1")
    assert row is not None and row["spec"]["os"]["version"] == "2"


def test_status_is_applied_once_per_seq_and_in_order(db: Database) -> None:
    add_device(db, "d1", {})
    specs.recompute(db)

    def ev(seq: int) -> dict[str, object]:
        return {"seq": seq, "observed_generation": 1, "conditions": [], "at": 1.0}

    assert state_store.apply_status(db, "d1", [ev(1), ev(2)], "mqtt")[:2] == (2, 2)
    assert state_store.apply_status(db, "d1", [ev(1), ev(2)], "http")[:2] == (2, 0)
    # A gap waits: 4 is not applied before 3.
    assert state_store.apply_status(db, "d1", [ev(4)], "mqtt")[:2] == (2, 0)
    assert state_store.apply_status(db, "d1", [ev(3), ev(4)], "mqtt")[:2] == (4, 2)
    assert state_store.event_counts(db, "d1") == {"events": 4, "distinct": 4, "max_seq": 4}
