"""K3s cluster formation in spec computation, on a real SQLite file through the real store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlite_utils import Database

from edge_server import k3s_cluster, specs
from edge_server.store import connect
from edge_server.store import devices as devices_store
from edge_server.store import state as state_store
from edge_server.store.k3s import ServerReport
from edge_server.store.migrations import migrate
from registration.desired import K3sSpec, SpecPatch
from tests.edge_server.test_specs import add_device, set_group

REPORT = ServerReport("https://10.0.0.5:6443", "K10abc::server:secret", "v1.31.0+k3s1")


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = connect(tmp_path / "c.db")
    migrate(database)
    return database


def k3s(db: Database, device_id: str) -> dict[str, Any]:
    row = state_store.get(db, device_id)
    assert row is not None
    spec: dict[str, Any] = row["spec"]["k3s"]
    return spec


def cluster(db: Database, version: str = "v1.31.0+k3s1", selector: str = "site=eu") -> None:
    set_group(db, "eu", selector, 0, SpecPatch(k3s=K3sSpec(version=version)))
    specs.recompute(db)


def test_lowest_id_is_the_server_and_agents_get_url_and_token_only_after_its_report(
    db: Database,
) -> None:
    for device_id in ("d2", "d1", "d3"):
        add_device(db, device_id, {"site": "eu"})
    cluster(db)
    assert k3s(db, "d1")["role"] == "server"
    for agent in ("d2", "d3"):
        assert k3s(db, agent)["role"] == "agent"
        assert k3s(db, agent)["token"] is None and k3s(db, agent)["server_url"] is None

    group, members = k3s_cluster.report(db, "d1", REPORT)
    changes = specs.recompute(db, members)
    assert group == "eu" and sorted(c.device_id for c in changes) == ["d2", "d3"]
    for agent in ("d2", "d3"):
        assert k3s(db, agent)["server_url"] == REPORT.server_url
        assert k3s(db, agent)["token"] == REPORT.token
    assert k3s(db, "d1")["token"] is None and k3s(db, "d1")["server_url"] is None


def test_an_agent_cannot_report_itself_as_the_server(db: Database) -> None:
    add_device(db, "d1", {"site": "eu"})
    add_device(db, "d2", {"site": "eu"})
    add_device(db, "x9", {"site": "us"})
    cluster(db)
    for device_id in ("d2", "x9"):
        with pytest.raises(k3s_cluster.NotServer):
            k3s_cluster.report(db, device_id, REPORT)


def test_the_label_chooses_the_server_and_a_later_device_never_takes_over(db: Database) -> None:
    add_device(db, "d5", {"site": "eu"})
    cluster(db)
    assert k3s(db, "d5")["role"] == "server"
    # A device with a lower id registers later: the running cluster keeps its server.
    add_device(db, "d1", {"site": "eu"})
    specs.recompute(db, ["d1"])
    assert k3s(db, "d1")["role"] == "agent" and k3s(db, "d5")["role"] == "server"
    specs.recompute(db, k3s_cluster.report(db, "d5", REPORT)[1])
    assert k3s(db, "d1")["token"] == REPORT.token
    # The label moves the server, and the whole cluster is recomputed with it: the old
    # server's token joins nobody any more.
    add_device(db, "d7", {"site": "eu", "corral.dev/k3s-role": "server"})
    changes = specs.recompute(db, ["d7"])
    assert {c.device_id for c in changes} == {"d1", "d5", "d7"}
    assert [k3s(db, d)["role"] for d in ("d1", "d5", "d7")] == ["agent", "agent", "server"]
    assert k3s(db, "d1")["token"] is None


def test_upgrade_goes_server_first_agents_follow_its_report(db: Database) -> None:
    add_device(db, "d1", {"site": "eu"})
    add_device(db, "d2", {"site": "eu"})
    cluster(db, "v1")
    specs.recompute(db, k3s_cluster.report(db, "d1", ServerReport("https://a:6443", "t", "v1"))[1])
    assert k3s(db, "d2")["version"] == "v1"

    cluster(db, "v2")
    assert k3s(db, "d1")["version"] == "v2"
    assert k3s(db, "d2")["version"] == "v1"  # until the server node runs v2
    specs.recompute(db, k3s_cluster.report(db, "d1", ServerReport("https://a:6443", "t", "v2"))[1])
    assert k3s(db, "d2")["version"] == "v2"


def test_a_deleted_server_node_hands_the_cluster_to_the_next(db: Database) -> None:
    for device_id in ("d1", "d2", "d3"):
        add_device(db, device_id, {"site": "eu"})
    cluster(db)
    specs.recompute(db, k3s_cluster.report(db, "d1", REPORT)[1])
    devices_store.delete(db, "d1")
    specs.recompute(db, k3s_cluster.forget(db, "d1"))
    assert k3s(db, "d2")["role"] == "server" and k3s(db, "d2")["token"] is None
    # The old server's token joins nobody any more.
    assert k3s(db, "d3")["role"] == "agent" and k3s(db, "d3")["token"] is None


def test_a_device_without_k3s_has_no_role_and_leaving_the_group_leaves_the_cluster(
    db: Database,
) -> None:
    add_device(db, "d1", {"site": "eu"})
    add_device(db, "d2", {"site": "eu"})
    add_device(db, "u1", {"site": "us"})
    cluster(db)
    assert k3s(db, "u1") == K3sSpec().model_dump()
    # d1 leaves the group: d2 becomes the server.
    devices_store.set_operator_labels(db, "d1", {"site": "us"})
    specs.recompute(db, ["d1"])
    assert k3s(db, "d1")["version"] is None and k3s(db, "d2")["role"] == "server"
