"""Acceptance: a 3-device group forms a K3s cluster and upgrades it, server node first.

Real parts: the server in its own process (embedded broker, then Mosquitto), three real
``corral-agent run`` processes on SimulatedHosts, the artifact mirror loaded over the API
with stand-in K3s releases (``tests/fixtures/k3s``: no registry serves K3s here), the
stand-in installer run through ``sh`` by the agents, the stand-in ``systemctl`` on PATH.
The stand-in installer records its exact environment on each device; the test reads it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.k3s_standins import (
    Release,
    installer_runs,
    installer_variables,
    path_with_standins,
    release,
)
from tests.server_process import terminate
from tests.support import Server, set_group, start_agent
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

V1 = "v1.31.4+k3s1"
V2 = "v1.32.0+k3s1"
TOKEN_FILE = "var/lib/rancher/k3s/server/node-token"


@dataclass
class Node:
    state: Path
    simulated: Path
    log: Path
    proc: subprocess.Popen[bytes]

    @property
    def device_id(self) -> str:
        return str(json.loads((self.state / "identity.json").read_text())["device_id"])

    @property
    def rootfs(self) -> Path:
        return self.simulated / "rootfs"


def import_release(server: Server, found: Release) -> None:
    for kind, name, path, arch in found.files():
        data = path.read_bytes()
        params = {"kind": kind, "name": name, "version": found.version}
        params["sha256"] = hashlib.sha256(data).hexdigest()
        if arch:
            params["arch"] = arch
        answer = server.api("POST", "/api/v1/artifacts", params=params, data=data)
        assert answer.status_code == 201, answer.text


def spec_of(server: Server, device_id: str) -> dict[str, Any]:
    answer = server.api("GET", f"/api/v1/devices/{device_id}/spec")
    assert answer.status_code == 200, answer.text
    spec: dict[str, Any] = answer.json()["spec"]
    return spec


def k3s_condition(server: Server, device_id: str) -> dict[str, Any] | None:
    shown = server.api("GET", f"/api/v1/devices/{device_id}").json()
    if not shown["in_sync"]:
        return None
    found = [c for c in shown["reported"]["conditions"] if c["type"] == "k3s"]
    return found[0] if found else None


def all_ready(server: Server, nodes: list[Node], version: str) -> bool:
    for node in nodes:
        condition = k3s_condition(server, node.device_id)
        if (
            condition is None
            or condition["status"] != "Ready"
            or version not in condition["message"]
        ):
            return False
    return True


@pytest.fixture
def nodes(fleet_server: Server, tmp_path: Path) -> Iterator[list[Node]]:
    token = fleet_server.create_token(labels={"site": "eu"}, max_uses=3)["token"]
    started: list[Node] = []
    try:
        for i in range(3):
            seed = tmp_path / f"seed{i}.json"
            seed.write_text(json.dumps({"server": fleet_server.url, "token": token}))
            state, simulated, log = (
                tmp_path / f"state{i}",
                tmp_path / f"dev{i}",
                tmp_path / f"a{i}.log",
            )
            proc = start_agent(state, seed, simulated, log, {"PATH": path_with_standins()})
            started.append(Node(state, simulated, log, proc))
        for node in started:
            wait_until("registration", (node.state / "identity.json").exists, timeout=60)
        yield started
    finally:
        for node in started:
            terminate(node.proc, 15)
    for node in started:
        assert "Traceback" not in node.log.read_text(), node.log.read_text()


def test_three_devices_form_one_cluster_and_upgrade_server_first(
    fleet_server: Server, nodes: list[Node], tmp_path: Path
) -> None:
    server = fleet_server
    import_release(server, release(V1, tmp_path / "v1"))
    set_group(server, "shop", "site=eu", {"k3s": {"version": V1}})

    def logs() -> str:
        return "\n".join(n.log.read_text()[-2000:] for n in nodes)

    wait_until("the cluster Ready at v1", lambda: all_ready(server, nodes, V1), 120, 0.5, logs)

    # One server node, two agents; only the agents' specs carry the join token.
    specs = {n.device_id: spec_of(server, n.device_id)["k3s"] for n in nodes}
    servers = [n for n in nodes if specs[n.device_id]["role"] == "server"]
    agents = [n for n in nodes if specs[n.device_id]["role"] == "agent"]
    assert len(servers) == 1 and len(agents) == 2
    head = servers[0]
    join_token = (head.rootfs / TOKEN_FILE).read_text().strip()
    assert specs[head.device_id]["token"] is None and specs[head.device_id]["server_url"] is None
    for agent in agents:
        assert specs[agent.device_id]["token"] == join_token
        assert specs[agent.device_id]["server_url"] == "https://127.0.0.1:6443"
        assert not (agent.rootfs / TOKEN_FILE).exists()

    # The stand-in installer recorded the exact environment on each device.
    for node in nodes:
        [run] = installer_runs(node.rootfs)
        expected = {
            "INSTALL_K3S_SKIP_DOWNLOAD": "true",
            "INSTALL_K3S_VERSION": V1,
            "INSTALL_K3S_EXEC": "server" if node is head else "agent",
            "K3S_NODE_NAME": node.device_id,
            "INSTALL_K3S_BIN_DIR": str(node.rootfs / "usr/local/bin"),
            "INSTALL_K3S_SYSTEMD_DIR": str(node.rootfs / "etc/systemd/system"),
            "INSTALL_K3S_SKIP_SELINUX_RPM": "true",
        }
        if node is not head:
            expected |= {"K3S_URL": "https://127.0.0.1:6443", "K3S_TOKEN": join_token}
        assert installer_variables(run) == expected
        unit = "k3s.service" if node is head else "k3s-agent.service"
        assert (node.rootfs / "etc/systemd/system" / unit).exists()
        assert join_token not in node.log.read_text()  # never logged

    # Bumping the group's version upgrades all three, the server node first.
    import_release(server, release(V2, tmp_path / "v2"))
    set_group(server, "shop", "site=eu", {"k3s": {"version": V2}})
    wait_until("the cluster Ready at v2", lambda: all_ready(server, nodes, V2), 120, 0.5, logs)
    upgraded = {n.device_id: installer_runs(n.rootfs)[-1] for n in nodes}
    assert all(run["INSTALL_K3S_VERSION"] == V2 for run in upgraded.values())
    head_at = int(upgraded[head.device_id]["_at"])
    for agent in agents:
        assert len(installer_runs(agent.rootfs)) == 2
        assert int(upgraded[agent.device_id]["_at"]) > head_at, "an agent upgraded first"
        assert spec_of(server, agent.device_id)["k3s"]["version"] == V2
