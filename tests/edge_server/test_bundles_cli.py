"""Bundles from the operator's side, through the real ``corral`` CLI against a real server:
``group create|set --bundle NAME=@file.yaml``, ``--remove-bundle``, per-device templating in
the computed specs, and ``device show|list`` with each reconciler's condition and the
installed OS and K3s versions."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import requests
import yaml

from tests.edge_server.test_devices import register
from tests.support import Machine, Server

APP = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: app
  labels: {site: "${labels.site}", node: ${device.name}}
spec:
  template:
    spec:
      nodeName: ${device.name}
      containers: [{name: app, image: "app:1", env: [{name: ID, value: ${device.id}}]}]
"""

CHART = """\
apiVersion: helm.cattle.io/v1
kind: HelmChart
metadata: {name: grafana, namespace: kube-system}
spec: {chart: grafana, valuesContent: "site: ${labels.site}"}
"""


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return f"@{path}"


def group_bundles(server: Server, name: str) -> dict[str, str]:
    shown = json.loads(server.corral("group", "show", name).stdout)
    return {b["name"]: b["content"] for b in shown["spec"].get("bundles") or []}


def test_group_create_and_set_take_bundles_from_yaml_files(server: Server, tmp_path: Path) -> None:
    app, chart = write(tmp_path, "app.yaml", APP), write(tmp_path, "chart.yaml", CHART)
    server.corral("group", "create", "web", "-l", "site=eu", "--bundle", f"app={app}")
    assert group_bundles(server, "web") == {"app": APP}

    server.corral("group", "set", "web", "--bundle", f"grafana={chart}")
    assert group_bundles(server, "web") == {"app": APP, "grafana": CHART}
    listed = server.corral("group", "list").stdout.splitlines()
    header = re.split(r"\s{2,}", listed[0].strip())
    row = re.split(r"\s{2,}", listed[1].strip())
    assert dict(zip(header, row, strict=True))["BUNDLES"] == "2"

    server.corral("group", "set", "web", "--remove-bundle", "app")
    assert group_bundles(server, "web") == {"grafana": CHART}


def test_a_bundle_that_is_not_yaml_is_refused_in_one_line(server: Server, tmp_path: Path) -> None:
    server.corral("group", "create", "web")
    bad = write(tmp_path, "bad.yaml", "kind: Deployment\nmetadata: {name: [oops\n")
    result = server.corral("group", "set", "web", "--bundle", f"app={bad}", check=False)
    assert result.returncode != 0
    assert result.stderr.count("\n") <= 2 and "Traceback" not in result.stderr, result.stderr
    assert "bundle app:" in result.stderr and "is not YAML" in result.stderr
    scalar = write(tmp_path, "scalar.yaml", "just a string\n")
    result = server.corral("group", "set", "web", "--bundle", f"app={scalar}", check=False)
    assert result.returncode != 0 and "no Kubernetes objects" in result.stderr
    missing = server.corral(
        "group", "set", "web", "--bundle", "app=@/nonexistent.yaml", check=False
    )
    assert missing.returncode != 0 and "cannot read /nonexistent.yaml" in missing.stderr
    assert group_bundles(server, "web") == {}


def enrol(server: Server, site: str) -> tuple[Machine, dict[str, Any]]:
    token = server.create_token(labels={"site": site})["token"]
    machine = Machine()
    answer = register(server, machine, token).json()
    return machine, answer


def spec_of(server: Server, device_id: str) -> dict[str, Any]:
    response = server.api("GET", f"/api/v1/devices/{device_id}")
    assert response.status_code == 200, response.text
    spec: dict[str, Any] = response.json()["desired"]["spec"]
    return spec


def test_each_device_gets_the_bundle_rendered_with_its_own_name_id_and_labels(
    server: Server, tmp_path: Path
) -> None:
    devices = [enrol(server, "eu")[1], enrol(server, "us")[1]]
    server.corral("group", "create", "all", "--bundle", f"app={write(tmp_path, 'a.yaml', APP)}")
    rendered = []
    for answer, site in zip(devices, ("eu", "us"), strict=True):
        (bundle,) = spec_of(server, answer["device_id"])["bundles"]
        document = yaml.safe_load(bundle["content"])
        assert document["metadata"]["labels"] == {"site": site, "node": answer["name"]}
        pod = document["spec"]["template"]["spec"]
        assert pod["nodeName"] == answer["name"]
        assert pod["containers"][0]["env"] == [{"name": "ID", "value": answer["device_id"]}]
        rendered.append(bundle["content"])
    assert rendered[0] != rendered[1]
    # The group keeps the template; a label change re-renders that device's spec only.
    assert "${device.name}" in group_bundles(server, "all")["app"]
    first = devices[0]["device_id"]
    before = server.api("GET", f"/api/v1/devices/{first}").json()["desired"]["generation"]
    server.corral("device", "label", first, "site=asia")
    shown = server.api("GET", f"/api/v1/devices/{first}").json()["desired"]
    assert shown["generation"] == before + 1
    assert 'site: "asia"' in shown["spec"]["bundles"][0]["content"]


def post_status(
    server: Server, device_id: str, cert: tuple[str, str], conditions: list[dict[str, Any]]
) -> None:
    generation = server.api("GET", f"/api/v1/devices/{device_id}").json()["desired"]["generation"]
    event = {"seq": 1, "observed_generation": generation, "at": time.time()}
    response = requests.post(
        f"{server.url}/api/v1/devices/{device_id}/status",
        json={"events": [{**event, "conditions": conditions}]},
        cert=cert,
        verify=str(server.ca),
        timeout=30,
    )
    assert response.status_code == 200, response.text


CONDITIONS = [
    {"type": "config", "status": "Applied", "reason": "Applied", "message": "0 file(s)"},
    {"type": "os", "status": "Ready", "reason": "Healthy", "version": "2026.11.1"},
    {
        "type": "k3s",
        "status": "Ready",
        "reason": "NodeReady",
        "message": "k3s v1.31.4+k3s1 server; node edge-1 Ready",
        "version": "v1.31.4+k3s1",
    },
    {"type": "bundles", "status": "Modified", "reason": "Drift", "message": "repairing: a.yaml"},
]


def test_device_show_and_list_show_conditions_and_installed_versions(
    server: Server, tmp_path: Path
) -> None:
    machine, answer = enrol(server, "eu")
    device_id = answer["device_id"]
    quiet, _ = enrol(server, "us")  # reports nothing: no versions known
    post_status(server, device_id, machine.write_identity(tmp_path / "id", answer), CONDITIONS)

    lines = server.corral("device", "show", device_id).stdout.splitlines()
    assert any(line.split() == ["os", "installed:", "2026.11.1"] for line in lines), lines
    assert any(line.split() == ["k3s", "installed:", "v1.31.4+k3s1"] for line in lines), lines
    conditions = lines[lines.index("Conditions:") + 1 :]
    assert ["os:", "Ready", "Healthy", "(version", "2026.11.1)"] in [
        line.split() for line in conditions
    ], conditions
    assert any(
        line.split()[:3] == ["k3s:", "Ready", "NodeReady"] and "(version v1.31.4+k3s1)" in line
        for line in conditions
    ), conditions
    assert any(line.split()[:3] == ["bundles:", "Modified", "Drift"] for line in conditions)

    listed = server.corral("device", "list").stdout.splitlines()
    header = re.split(r"\s{2,}", listed[0].strip())
    rows = {
        row["ID"]: row
        for row in (
            dict(zip(header, re.split(r"\s{2,}", line.strip()), strict=True)) for line in listed[1:]
        )
    }
    shown = rows[device_id]
    assert (shown["OS"], shown["K3S"]) == ("2026.11.1", "v1.31.4+k3s1")
    assert shown["CONDITIONS"] == "config=Applied,os=Ready,k3s=Ready,bundles=Modified"
    others = [row for key, row in rows.items() if key != device_id]
    assert [(r["OS"], r["K3S"], r["CONDITIONS"]) for r in others] == [("-", "-", "-")]
    assert quiet.dmi_uuid  # the second device is listed too


def test_os_flags_set_version_and_downgrade_and_resolved_fields_stay_the_servers(
    server: Server,
) -> None:
    """``--os-version``/``--allow-downgrade`` reach the group's spec; what the server resolves
    (the image, the K3s role) has no flag."""
    server.corral("group", "create", "fleet", "-l", "site=eu")
    server.corral("group", "set", "fleet", "--os-version", "2.0", "--allow-downgrade")
    spec = json.loads(server.corral("group", "show", "fleet", "-o", "json").stdout)["spec"]
    assert spec["os"] == {"version": "2.0", "allow_downgrade": True}
    server.corral("group", "set", "fleet", "--no-allow-downgrade", "--k3s-version", "v1.31.4+k3s1")
    spec = json.loads(server.corral("group", "show", "fleet", "-o", "json").stdout)["spec"]
    assert spec["os"] == {"version": "2.0", "allow_downgrade": False}
    assert spec["k3s"] == {"version": "v1.31.4+k3s1"}
    for flag in ("--os-artifact", "--k3s-role"):
        refused = server.corral("group", "set", "fleet", flag, "x", check=False)
        assert refused.returncode != 0 and "unrecognized arguments" in refused.stderr
