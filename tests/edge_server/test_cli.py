"""The real ``corral`` entry point: global flags in either position, and ``device show``."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.edge_server.test_devices import register
from tests.support import BIN, Machine, Server, free_port


def corral(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "corral"), *args], capture_output=True, text=True, timeout=timeout
    )


def wait_healthy(url: str, ca: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited {proc.returncode}: {log.read_text()}"
        try:
            if ca.exists() and requests.get(f"{url}/healthz", verify=str(ca), timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not come up: {log.read_text()}")


@pytest.mark.parametrize("noun", ["serve", "demo"])
def test_serve_and_demo_take_data_dir_after_the_subcommand(noun: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = free_port()
    log = tmp_path / f"{noun}.log"
    argv = [str(BIN / "corral"), noun, "--data-dir", str(data), "--listen", f"127.0.0.1:{port}"]
    argv += ["--mqtt-listen", f"127.0.0.1:{free_port()}"] if noun == "serve" else ["--devices", "1"]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_healthy(f"https://127.0.0.1:{port}", data / "pki" / "ca.pem", proc, log)
        # The server made its data dir where it was told, and the CLI finds it from there.
        assert (data / "admin-token").exists() and (data / "client.json").exists()
        listing = corral("device", "list", "-o", "json", "--data-dir", str(data))
        assert listing.returncode == 0, listing.stderr
        assert isinstance(json.loads(listing.stdout), list)
    finally:
        Server(data, port, proc=proc).stop()  # the harness's SIGTERM, then kill
    assert "unrecognized arguments" not in log.read_text()


def test_every_api_command_takes_the_global_flags_before_or_after(server: Server) -> None:
    data = str(server.data_dir)
    created = corral("token", "create", "--group", "g", "-o", "json", "--data-dir", data)
    assert created.returncode == 0, created.stderr
    token_id = json.loads(created.stdout)["id"]
    commands = [
        ["token", "list"],
        ["token", "show", token_id],
        ["device", "list"],
        ["group", "list"],
        ["api-token", "list"],
    ]
    for command in commands:
        before = corral("--data-dir", data, "--server", server.url, *command, "-o", "json")
        after = corral(*command, "-o", "json", "--server", server.url, "--data-dir", data)
        assert before.returncode == 0, (command, before.stderr)
        assert after.returncode == 0, (command, after.stderr)
        assert json.loads(after.stdout) == json.loads(before.stdout)
    # -o before the noun too.
    first = corral("-o", "json", "--data-dir", data, "token", "list")
    assert first.returncode == 0 and json.loads(first.stdout)[0]["id"] == token_id
    # Between noun and verb too.
    middle = corral("token", "--data-dir", data, "list", "-o", "json")
    assert middle.returncode == 0, middle.stderr
    # A flag after the verb wins over one before the noun.
    wrong = corral("--data-dir", str(server.data_dir.parent / "nowhere"), "token", "list")
    assert wrong.returncode == 1 and "no server to talk to" in wrong.stderr
    right = corral("--data-dir", "/nowhere", "token", "list", "--data-dir", data)
    assert right.returncode == 0 and token_id in right.stdout


def test_debug_after_the_subcommand_shows_the_traceback(server: Server) -> None:
    data = str(server.data_dir)
    quiet = corral("device", "show", "dev-nope", "--data-dir", data)
    assert quiet.returncode == 1 and quiet.stderr.count("\n") == 1
    assert "Traceback" not in quiet.stderr
    loud = corral("device", "show", "dev-nope", "--data-dir", data, "--debug")
    assert loud.returncode == 1 and "Traceback" in loud.stderr and "not_found" in loud.stderr


def test_broker_config_takes_data_dir_after_the_subcommand(server: Server, tmp_path: Path) -> None:
    out = tmp_path / "mosquitto"
    result = corral(
        "broker", "mosquitto-config", "--out", str(out), "--data-dir", str(server.data_dir)
    )
    assert result.returncode == 0, result.stderr
    assert (out / "mosquitto.conf").exists()
    # It used this server's CA, not a new data dir under the working directory.
    assert (out / "ca.pem").read_bytes() == server.ca.read_bytes()


def post_status(server: Server, device_id: str, cert: tuple[str, str], generation: int) -> None:
    batch = {
        "events": [
            {
                "seq": 1,
                "observed_generation": generation,
                "at": time.time(),
                "conditions": [
                    {"type": "config", "status": "Applied", "reason": "Written", "message": "1"}
                ],
            }
        ]
    }
    response = requests.post(
        f"{server.url}/api/v1/devices/{device_id}/status",
        json=batch,
        cert=cert,
        verify=str(server.ca),
        timeout=30,
    )
    assert response.status_code == 200, response.text


def test_device_show_is_readable_and_json_with_o_json(server: Server, tmp_path: Path) -> None:
    token = server.create_token(labels={"site": "eu"})
    machine = Machine()
    answer = register(server, machine, token["token"], labels={"rack": "r7"}).json()
    device_id = answer["device_id"]
    server.corral("device", "label", device_id, "tier=gold")
    server.corral("group", "create", "all", "--priority", "1")
    server.corral("group", "set", "all", "--os-version", "1.4", "--file", "/etc/motd=hi")
    shown = server.api("GET", f"/api/v1/devices/{device_id}").json()
    generation = shown["desired"]["generation"]
    post_status(server, device_id, machine.write_identity(tmp_path / "id", answer), generation)

    text = server.corral("device", "show", device_id).stdout
    with pytest.raises(ValueError):
        json.loads(text)
    lines = text.splitlines()
    assert lines[0].split() == ["id:", device_id]
    assert lines[1].split() == ["name:", answer["name"]]
    assert any(line.split()[:2] == ["presence:", "offline,"] for line in lines)
    sections = [line for line in lines if line and not line.startswith(" ")]
    for title in ("Labels:", "Facts:", "Desired vs reported:", "Conditions:", "Certificates:"):
        assert title in sections, text
    # Labels with where each came from.
    assert "  rack:  r7  (local)" in lines
    assert "  site:  eu  (token)" in lines
    assert "  tier:  gold  (operator)" in lines
    # Facts, readable.
    assert any(line.split() == ["memory:", "1.0", "GiB"] for line in lines), text
    assert any(line.split() == ["cpu:", "2", "x", "sim"] for line in lines), text
    assert any(line.split() == ["dmi", "product_uuid:", machine.dmi_uuid] for line in lines)
    # Desired against reported, and the conditions.
    assert f"desired {generation}, observed {generation} (in sync)" in text
    assert any(line.split() == ["os:", "1.4"] for line in lines), text
    assert any(line.split() == ["config", "files:", "/etc/motd"] for line in lines), text
    assert any(line.split() == ["config:", "Applied", "Written", "1"] for line in lines), text

    as_json = json.loads(server.corral("device", "show", device_id, "-o", "json").stdout)
    assert as_json["id"] == device_id and as_json["labels"] == shown["labels"]
    assert as_json["reported"]["conditions"][0]["status"] == "Applied"
    assert set(as_json) == set(shown)
