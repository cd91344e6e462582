"""Bundles end to end: a real server, a real ``corral-agent run`` process on a
``SimulatedHost`` that is its group's K3s server node, the stand-in ``k3s``
(``tests/fixtures/k3s/k3s``, which records every ``kubectl`` call), and the real ``corral`` CLI.

A bundle added to the group appears, rendered for the device, in the node's auto-deploy
manifests dir; a hand edit is reported as drift (``Modified``) and repaired; a removed
bundle is deleted through ``k3s kubectl delete -f`` and its file goes.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

from tests.support import REPO, Server, device, start_agent
from tests.waiting import wait_until

STANDIN = REPO / "tests" / "fixtures" / "k3s" / "k3s"
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


def test_bundles_reach_the_server_node_drift_is_repaired_and_removal_deletes(
    server: Server, tmp_path: Path
) -> None:
    app = tmp_path / "app.yaml"
    app.write_text(APP)
    # Until cluster formation names it, the group says which node is the K3s server.
    server.corral(
        "group", "create", "shop", "-l", "site=shop", "--k3s-role", "server",
        "--bundle", f"app=@{app}",
    )  # fmt: skip

    state, simulated, log = tmp_path / "state", tmp_path / "device", tmp_path / "agent.log"
    rootfs = simulated / "rootfs"
    (rootfs / "usr/local/bin").mkdir(parents=True)
    shutil.copy(STANDIN, rootfs / "usr/local/bin/k3s")
    seed = write_seed(server, tmp_path / "seed.json", site="shop")
    # HTTPS polling every 2 s: each pass also looks for drift.
    proc = start_agent(state, seed, simulated, log, "--no-mqtt")
    try:
        identity = state / "identity.json"
        device_id = str(
            wait_until(
                "registration",
                lambda: identity.exists() and json.loads(identity.read_text())["device_id"],
            )
        )
        name = device(server, device_id)["name"]
        manifest = rootfs / MANIFESTS / "app.yaml"

        # 1. The bundle appears, rendered for this device, and is reported Applied.
        wait_until("the manifest", manifest.exists, detail=log.read_text)
        assert manifest.read_text() == APP.replace("${device.name}", name).replace(
            "${labels.site}", "shop"
        )
        wait_until("in sync", lambda: device(server, device_id)["in_sync"])
        wait_until("Applied", lambda: reported(server, device_id)["bundles"]["status"] == "Applied")
        rendered = manifest.read_text()

        # 2. A hand edit: reported Modified, then repaired and Applied again.
        manifest.write_text(rendered.replace("site: shop", "site: hacked"))
        wait_until("repaired", lambda: manifest.read_text() == rendered, detail=log.read_text)
        wait_until(
            "Modified reported",
            lambda: any(c["status"] == "Modified" for c in bundle_conditions(server, device_id)),
        )
        modified = [c for c in bundle_conditions(server, device_id) if c["status"] == "Modified"]
        assert modified[0]["reason"] == "Drift" and "app.yaml" in modified[0]["message"]
        wait_until("Applied", lambda: reported(server, device_id)["bundles"]["status"] == "Applied")

        # 3. Removed from the group: deleted through k3s kubectl, then the file goes.
        server.corral("group", "set", "shop", "--remove-bundle", "app")
        wait_until("the manifest removed", lambda: not manifest.exists(), detail=log.read_text)
        calls = (rootfs / "var/log/k3s-kubectl.log").read_text().splitlines()
        assert calls == [f"delete --ignore-not-found -f {manifest}"]
        wait_until("in sync", lambda: device(server, device_id)["in_sync"])
        bundles = reported(server, device_id)["bundles"]
        assert (bundles["status"], bundles["message"]) == ("Applied", "0 bundle(s)")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
