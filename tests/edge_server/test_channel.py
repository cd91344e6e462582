"""The channel's faults and bad input, on both brokers, with real clients and a real server."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import requests

from registration.desired import nudge_topic, status_topic
from tests.mqtt_support import mosquitto_pub, mosquitto_sub
from tests.support import Machine, Server
from tests.waiting import wait_until


def registered(server: Server, tmp_path: Path, name: str) -> tuple[str, tuple[str, str]]:
    token = server.create_token()["token"]
    machine = Machine()
    answer = requests.post(
        f"{server.url}/api/v1/register",
        json=machine.request(token),
        verify=str(server.ca),
        timeout=30,
    ).json()
    return answer["device_id"], machine.write_identity(tmp_path / name, answer)


def batch(*seqs: int, generation: int = 1) -> dict[str, Any]:
    return {
        "events": [
            {
                "seq": s,
                "observed_generation": generation,
                "at": time.time(),
                "conditions": [{"type": "config", "status": "Applied"}],
            }
            for s in seqs
        ]
    }


def events(server: Server, device_id: str) -> dict[str, int]:
    shown = server.api("GET", f"/api/v1/devices/{device_id}").json()
    return dict(shown["reported"]["status_events"])


def stats(server: Server) -> dict[str, Any]:
    return dict(server.api("GET", "/api/v1/stats").json()["channel"])


def publish(
    server: Server, cert: tuple[str, str], client_id: str, topic: str, message: str
) -> subprocess.CompletedProcess[str]:
    argv = mosquitto_pub(
        server.mqtt_port,
        server.ca,
        Path(cert[0]),
        Path(cert[1]),
        topic,
        message,
        client_id=client_id,
    )
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def test_spoofed_and_malformed_status_over_mqtt(fleet_server: Server, tmp_path: Path) -> None:
    server = fleet_server
    a_id, a_cert = registered(server, tmp_path, "a")
    b_id, _ = registered(server, tmp_path, "b")
    # A publishes a well-formed status on B's topic: the broker refuses or drops it.
    publish(server, a_cert, a_id, status_topic(b_id), json.dumps(batch(1)))
    # A's own malformed status is dropped and counted; the channel keeps working.
    dropped = stats(server)["dropped"]
    for junk in ("{not json", json.dumps({"events": [{"seq": "one"}]}), json.dumps([1, 2])):
        assert publish(server, a_cert, a_id, status_topic(a_id), junk).returncode == 0
    wait_until("malformed status dropped", lambda: stats(server)["dropped"] >= dropped + 3)
    assert publish(server, a_cert, a_id, status_topic(a_id), json.dumps(batch(1))).returncode == 0
    wait_until("A's status applied", lambda: events(server, a_id)["events"] == 1)
    assert events(server, b_id) == {"events": 0, "distinct": 0, "max_seq": 0}
    assert requests.get(f"{server.url}/healthz", verify=str(server.ca), timeout=10).ok


def test_status_over_https_is_applied_once_per_seq(fleet_server: Server, tmp_path: Path) -> None:
    server = fleet_server
    device_id, cert = registered(server, tmp_path, "d")
    url = f"{server.url}/api/v1/devices/{device_id}/status"

    def post(body: Any) -> requests.Response:
        return requests.post(url, json=body, cert=cert, verify=str(server.ca), timeout=30)

    for bad in ({"events": "x"}, {"events": [{"seq": 0}]}, {"nope": 1}):
        response = post(bad)
        assert response.status_code == 400 and response.json()["error"] == "invalid_document"
    assert post(batch(1, 2)).json() == {"acked_seq": 2, "applied": 2}
    assert post(batch(1, 2)).json() == {"acked_seq": 2, "applied": 0}
    assert post(batch(2, 3)).json() == {"acked_seq": 3, "applied": 1}
    assert events(server, device_id) == {"events": 3, "distinct": 3, "max_seq": 3}


def test_other_devices_and_revoked_certificates_are_refused(
    fleet_server: Server, tmp_path: Path
) -> None:
    server = fleet_server
    a_id, a_cert = registered(server, tmp_path, "a")
    b_id, _ = registered(server, tmp_path, "b")

    def spec(device_id: str) -> requests.Response:
        return requests.get(
            f"{server.url}/api/v1/devices/{device_id}/spec",
            cert=a_cert,
            verify=str(server.ca),
            timeout=30,
        )

    assert spec(a_id).status_code == 200
    assert spec(b_id).status_code == 403
    assert publish(server, a_cert, a_id, status_topic(a_id), json.dumps(batch(1))).returncode == 0
    server.corral("device", "delete", a_id)
    assert spec(a_id).status_code == 403
    if server.broker == "mosquitto":
        server.mosquitto.hup()  # the server rewrote the CRL; Mosquitto rereads it on SIGHUP
        time.sleep(0.5)
    refused = publish(server, a_cert, a_id, status_topic(a_id), json.dumps(batch(2)))
    assert refused.returncode != 0, refused


def test_demo_shows_fifty_online_devices_at_the_current_generation(tmp_path: Path) -> None:
    from tests.support import BIN, free_port

    data = tmp_path / "demo"
    port, mqtt = free_port(), free_port()
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(BIN / "corral"),
                "--data-dir",
                str(data),
                "demo",
                "--devices",
                "50",
                "--listen",
                f"127.0.0.1:{port}",
                "--mqtt-listen",
                f"127.0.0.1:{mqtt}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        def fleet() -> list[dict[str, Any]]:
            result = subprocess.run(
                [str(BIN / "corral"), "--data-dir", str(data), "device", "list", "-o", "json"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            return list(json.loads(result.stdout)) if result.returncode == 0 else []

        def converged() -> bool:
            devices = fleet()
            return len(devices) == 50 and all(
                d["online"] and d["generation"] >= 1 and d["observed_generation"] == d["generation"]
                for d in devices
            )

        wait_until("50 demo devices online and converged", converged, timeout=180)
        table = subprocess.run(
            [str(BIN / "corral"), "--data-dir", str(data), "device", "list"],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        assert table.count("online") == 50 and "config=Applied" in table
    finally:
        proc.terminate()
        proc.wait(180)  # 50 agents say goodbye, then the server stops; slow on a loaded box
    assert proc.returncode == 0
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def test_nudges_carry_no_secrets(fleet_server: Server, tmp_path: Path) -> None:
    """The K3s join token reaches an agent node only in its spec over mTLS HTTPS: the server
    node reports it (``POST …/k3s``), the other node's nudge carries none of it."""
    server = fleet_server
    node_a, cert_a = registered(server, tmp_path, "a")
    node_b, cert_b = registered(server, tmp_path, "b")
    server_node, agent_node = sorted([(node_a, cert_a), (node_b, cert_b)])  # the lowest id
    body = {"name": "k3s", "selector": "", "spec": {"k3s": {"version": "v1.30.2+k3s1"}}}
    assert server.api("POST", "/api/v1/groups", body).status_code == 201
    report = {
        "server_url": "https://10.0.0.1:6443",
        "token": "K10-very-secret-join-token",
        "version": "v1.30.2+k3s1",
    }
    answer = requests.post(
        f"{server.url}/api/v1/devices/{server_node[0]}/k3s",
        json=report,
        cert=server_node[1],
        verify=str(server.ca),
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    device_id, cert = agent_node
    argv = mosquitto_sub(
        server.mqtt_port,
        server.ca,
        Path(cert[0]),
        Path(cert[1]),
        [nudge_topic(device_id)],
        client_id=device_id,
        count=1,
        wait=10,
    )
    got = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert got.returncode == 0, got.stderr
    topic, payload = got.stdout.strip().split(" ", 1)
    assert topic == nudge_topic(device_id)
    nudge = json.loads(payload)
    assert set(nudge) == {"generation", "acked_seq"} and nudge["generation"] >= 2
    assert "secret" not in got.stdout
    # The token reaches the device only over mTLS HTTPS, in its spec.
    spec = requests.get(
        f"{server.url}/api/v1/devices/{device_id}/spec",
        cert=cert,
        verify=str(server.ca),
        timeout=30,
    ).json()
    assert spec["spec"]["k3s"]["token"] == "K10-very-secret-join-token"
    assert spec["spec"]["k3s"]["server_url"] == "https://10.0.0.1:6443"
