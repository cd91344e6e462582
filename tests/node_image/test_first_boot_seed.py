"""First boot from a seed the agent finds itself: a static network written for
systemd-networkd, the hostname from the seed's template, and a real ``corral-agent run
--seed auto`` that waits on a blank image until a seed appears, then registers."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from node_image.agent import network
from node_image.host import SimulatedHost
from node_image.image.layout import LIVE_MEDIUM, SEED_PATH, SEED_SLOT_SIZE
from registration.seed import check_network
from tests.support import BIN, Server
from tests.waiting import wait_until

LIVE_SEED = str(LIVE_MEDIUM) + SEED_PATH
NETWORKCTL = """#!/bin/sh
# Stand-in for networkctl: records its arguments under the simulated root.
mkdir -p "$CORRAL_SIMULATED_ROOT/var/log"
echo "$@" >> "$CORRAL_SIMULATED_ROOT/var/log/networkctl.log"
"""


@pytest.fixture
def standins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``networkctl`` first on PATH, as a stand-in (this machine's networkd is not ours)."""
    directory = tmp_path / "standins"
    directory.mkdir()
    script = directory / "networkctl"
    script.write_text(NETWORKCTL)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{directory}{os.pathsep}{os.environ['PATH']}")
    return directory


def test_static_network_is_written_for_networkd_and_reloaded(
    tmp_path: Path, standins: Path
) -> None:
    host = SimulatedHost(tmp_path / "host")
    settings = check_network(
        {
            "address": "192.168.50.7/24",
            "gateway": "192.168.50.1",
            "dns": ["192.168.50.1", "9.9.9.9"],
            "interface": "en* eth0",
        }
    )
    assert network.apply(host, settings)
    written = host.resolve("/etc/systemd/network/10-corral-static.network").read_text()
    assert written == (
        "# Written by corral-agent from the seed's static network settings.\n"
        "[Match]\n"
        "Name=en* eth0\n"
        "\n"
        "[Network]\n"
        "Address=192.168.50.7/24\n"
        "Gateway=192.168.50.1\n"
        "DNS=192.168.50.1\n"
        "DNS=9.9.9.9\n"
    )
    assert host.resolve("/var/log/networkctl.log").read_text() == "reload\n"
    assert not network.apply(host, settings)  # unchanged: neither rewritten nor reloaded
    assert host.resolve("/var/log/networkctl.log").read_text() == "reload\n"


def test_blank_image_waits_for_a_seed_then_applies_it_and_registers(
    server: Server, tmp_path: Path, standins: Path
) -> None:
    host_dir = tmp_path / "host"
    medium = host_dir / "rootfs" / LIVE_SEED.lstrip("/")
    medium.parent.mkdir(parents=True)
    medium.write_bytes(b"{}" + b" " * (SEED_SLOT_SIZE - 2))  # an unseeded image
    state, log = tmp_path / "state", tmp_path / "agent.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "corral-agent"), "run", "--state-dir", str(state), "--seed", "auto"]
            + ["--simulated", str(host_dir), "--poll-interval", "2"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ},
        )
    try:
        wait_until("the agent to wait for a seed", lambda: "no seed" in log.read_text(), 30)
        assert proc.poll() is None, log.read_text()
        token = server.create_token()["token"]
        seed = {
            "server": server.url,
            "token": token,
            "hostname_template": "shop-${dmi.product_uuid:8}",
            "network": {"address": "10.9.8.7/24", "gateway": "10.9.8.1", "interface": "eth0"},
        }
        raw = json.dumps(seed).encode()
        medium.write_bytes(raw + b" " * (SEED_SLOT_SIZE - len(raw)))
        wait_until("identity", (state / "identity.json").exists, 60)
        device_id = json.loads((state / "identity.json").read_text())["device_id"]
        uuid = json.loads((host_dir / "machine.json").read_text())["product_uuid"]
        hostname = f"shop-{uuid[:8]}"
        assert (host_dir / "rootfs/etc/hostname").read_text() == f"{hostname}\n"
        device = server.api("GET", f"/api/v1/devices/{device_id}").json()
        assert device["facts"]["hostname"] == hostname
        networkd = host_dir / "rootfs/etc/systemd/network/10-corral-static.network"
        assert "Address=10.9.8.7/24\nGateway=10.9.8.1\n" in networkd.read_text()
        assert (host_dir / "rootfs/var/log/networkctl.log").read_text() == "reload\n"

        def online() -> bool:
            return bool(server.api("GET", f"/api/v1/devices/{device_id}").json()["online"])

        wait_until("the registered agent to come online", online, 60)
        text = log.read_text()
        assert text.count("no seed") == 1, text
        assert "seed found: " + LIVE_SEED in text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, log.read_text()
        assert "Traceback" not in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_simulated_host_records_the_clock_settings_and_leaves_the_real_clock(
    tmp_path: Path,
) -> None:
    host = SimulatedHost(tmp_path / "host")
    host.set_clock(86400.0)
    host.set_clock(1_800_000_000.5)
    recorded = json.loads((tmp_path / "host" / "clock.json").read_text())
    assert recorded == {"set": [86400.0, 1_800_000_000.5]}
    assert time.time() > 1_700_000_000
