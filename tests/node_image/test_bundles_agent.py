"""Bundles end to end: a real server with the stand-in K3s release in its mirror, two real
``corral-agent run`` processes on ``SimulatedHost``s that form the group's K3s cluster (the
one labelled ``corral.dev/k3s-role=server`` is the server node), the stand-in ``k3s``
(``tests/fixtures/k3s/k3s``, which records every ``kubectl`` call), and the real ``corral`` CLI.

A bundle added to the group appears, rendered for the device, in the node's auto-deploy
manifests dir; a hand edit is reported as drift (``Modified``) and repaired; a removed
bundle is deleted through ``k3s kubectl delete -f`` and its file goes.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.k3s_standins import path_with_standins, release
from tests.support import Server, device, start_agent
from tests.waiting import wait_until

VERSION = "v1.31.4+k3s1"
MANIFESTS = Path("var/lib/rancher/k3s/server/manifests")

APP = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: app
  namespace: default
data:
  node: ${device.name}
  site: ${labels.site}
"""


@dataclass
class Node:
    """A real agent process on its simulated device."""

    proc: subprocess.Popen[bytes]
    state: Path
    rootfs: Path
    log: Path

    def device_id(self) -> str:
        identity = self.state / "identity.json"
        return str(
            wait_until(
                "registration",
                lambda: identity.exists() and json.loads(identity.read_text())["device_id"],
                detail=self.log.read_text,
            )
        )


def write_seed(server: Server, path: Path, **labels: str) -> Path:
    token = server.create_token(labels=labels, max_uses=10)["token"]
    path.write_text(json.dumps({"server": server.url, "token": token, "labels": labels}))
    return path


def bundle_conditions(server: Server, device_id: str) -> list[dict[str, Any]]:
    """Every ``bundles`` condition the server applied for the device, in seq order (read
    from the server's own database)."""
    with sqlite3.connect(f"file:{server.db_path}?mode=ro", uri=True) as db:
        rows = db.execute(
            "SELECT conditions FROM status_events WHERE device_id = ? ORDER BY seq", (device_id,)
        ).fetchall()
    return [c for (text,) in rows for c in json.loads(text) if c["type"] == "bundles"]


def reported(server: Server, device_id: str) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in device(server, device_id)["reported"]["conditions"]}


def import_release(server: Server, directory: Path) -> None:
    """The stand-in K3s release, imported into the server's mirror."""
    for kind, name, path, arch in release(VERSION, directory).files():
        query = {"kind": kind, "name": name, "version": VERSION, **({"arch": arch} if arch else {})}
        response = server.api("POST", "/api/v1/artifacts", params=query, data=path.read_bytes())
        assert response.status_code == 201, response.text


def start(server: Server, tmp_path: Path, name: str, **labels: str) -> Node:
    state, simulated = tmp_path / name / "state", tmp_path / name / "device"
    seed = write_seed(server, tmp_path / f"{name}.json", site="shop", **labels)
    log = tmp_path / f"{name}.log"
    # HTTPS polling every 2 s: each pass also looks for drift.
    # The stand-in systemctl first on PATH, for install.sh.
    env = {"PATH": path_with_standins()}
    proc = start_agent(state, seed, simulated, log, env, extra=("--no-mqtt",))
    return Node(proc, state, simulated / "rootfs", log)


def test_bundles_reach_the_server_node_drift_is_repaired_and_removal_deletes(
    server: Server, tmp_path: Path
) -> None:
    import_release(server, tmp_path / "release")
    app = tmp_path / "app.yaml"
    app.write_text(APP)
    server.corral(
        "group", "create", "shop", "-l", "site=shop", "--k3s-version", VERSION,
        "--bundle", f"app=@{app}",
    )  # fmt: skip
    nodes = [
        start(server, tmp_path, "first", **{"corral.dev/k3s-role": "server"}),
        start(server, tmp_path, "second"),
    ]
    try:
        first, second = nodes
        first_id, second_id = first.device_id(), second.device_id()
        name = device(server, first_id)["name"]
        manifest = first.rootfs / MANIFESTS / "app.yaml"

        # 1. K3s formed the cluster; the bundle appears on the server node only, rendered for
        #    it, and both report their bundles condition.
        wait_until("the manifest", manifest.exists, timeout=120, detail=first.log.read_text)
        assert manifest.read_text() == APP.replace("${device.name}", name).replace(
            "${labels.site}", "shop"
        )
        wait_until(
            "both Ready",
            lambda: all(reported(server, d)["k3s"]["status"] == "Ready" for d in nodes_ids(nodes)),
            timeout=120,
        )
        assert reported(server, first_id)["bundles"]["status"] == "Applied"
        other = reported(server, second_id)["bundles"]
        assert (other["status"], other["message"]) == ("Applied", "not the K3s server node")
        assert not (second.rootfs / MANIFESTS).exists()
        rendered = manifest.read_text()
        # The operator sees each reconciler's condition and the installed K3s version.
        shown = server.corral("device", "show", first_id).stdout.splitlines()
        assert ["k3s", "installed:", VERSION] in [line.split() for line in shown], shown
        assert any(line.split()[:2] == ["bundles:", "Applied"] for line in shown), shown
        listed = server.corral("device", "list").stdout.splitlines()
        header = re.split(r"\s{2,}", listed[0].strip())
        rows = [dict(zip(header, re.split(r"\s{2,}", r.strip()), strict=True)) for r in listed[1:]]
        assert sorted(r["K3S"] for r in rows) == [VERSION, VERSION]
        assert all("bundles=Applied" in r["CONDITIONS"] for r in rows), rows

        # 2. A hand edit: reported Modified, then repaired and Applied again.
        manifest.write_text(rendered.replace("site: shop", "site: hacked"))
        wait_until("repaired", lambda: manifest.read_text() == rendered, detail=first.log.read_text)
        wait_until(
            "Modified reported",
            lambda: any(c["status"] == "Modified" for c in bundle_conditions(server, first_id)),
        )
        modified = [c for c in bundle_conditions(server, first_id) if c["status"] == "Modified"]
        assert modified[0]["reason"] == "Drift" and "app.yaml" in modified[0]["message"]
        wait_until("Applied", lambda: reported(server, first_id)["bundles"]["status"] == "Applied")

        # 3. Removed from the group: deleted through k3s kubectl, then the file goes.
        server.corral("group", "set", "shop", "--remove-bundle", "app")
        wait_until(
            "the manifest removed", lambda: not manifest.exists(), detail=first.log.read_text
        )
        calls = (first.rootfs / "var/log/k3s-kubectl.log").read_text().splitlines()
        assert f"delete --ignore-not-found -f {manifest}" in calls
        assert not any(c.startswith("delete") for c in kubectl_calls(second))
        wait_until("in sync", lambda: device(server, first_id)["in_sync"])
        bundles = reported(server, first_id)["bundles"]
        assert (bundles["status"], bundles["message"]) == ("Applied", "0 bundle(s)")
    finally:
        for node in nodes:
            node.proc.terminate()
        for node in nodes:
            node.proc.wait(timeout=30)


def nodes_ids(nodes: list[Node]) -> list[str]:
    return [node.device_id() for node in nodes]


def kubectl_calls(node: Node) -> list[str]:
    log = node.rootfs / "var/log/k3s-kubectl.log"
    return log.read_text().splitlines() if log.exists() else []
