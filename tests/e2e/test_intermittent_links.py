"""Five real agents in their own network namespaces lose their links, or 30 % of their
packets, while the spec changes twice. When the links return, every device reports the
latest generation, and every status event each agent wrote is applied exactly once."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.netns import Host, Lab
from tests.support import BIN
from tests.waiting import wait_until

N_AGENTS = 5
CONVERGE = 240.0


class FleetServer:
    """``corral serve`` inside the lab's server namespace, driven by the CLI in it too."""

    def __init__(self, lab: Lab, data: Path) -> None:
        self.lab = lab
        self.data = data
        self.host: Host = lab.server
        self.url = f"https://{self.host.address}:8443"
        self.proc: subprocess.Popen[Any] | None = None
        self.broker: subprocess.Popen[Any] | None = None
        self.log = data.parent / "server.log"

    def start_mosquitto(self, out_dir: Path) -> None:
        """Mosquitto in the server namespace, configured by ``corral broker mosquitto-config``."""
        self.corral(
            "broker",
            "mosquitto-config",
            "--out",
            str(out_dir),
            "--listen",
            f"{self.host.address}:8883",
            "--run-as",
            "root",
        )
        with (self.data.parent / "mosquitto.log").open("ab") as out:
            self.broker = self.host.popen(
                ["mosquitto", "-c", str(out_dir / "mosquitto.conf")],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.host.wait_tcp(self.host.address, 8883, timeout=30)

    def start(self, extra: list[str] | None = None) -> None:
        with self.log.open("ab") as out:
            self.proc = self.host.popen(
                [
                    str(BIN / "corral"),
                    "--data-dir",
                    str(self.data),
                    "serve",
                    "--listen",
                    f"{self.host.address}:8443",
                    "--mqtt-listen",
                    f"{self.host.address}:8883",
                    *(extra or []),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.host.wait_tcp(self.host.address, 8443, timeout=60)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)

    def corral(self, *args: str) -> str:
        result = self.host.run(
            [str(BIN / "corral"), "--data-dir", str(self.data), *args],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return str(result.stdout)

    def devices(self) -> list[dict[str, Any]]:
        return list(json.loads(self.corral("device", "list", "-o", "json")))

    def show(self, device_id: str) -> dict[str, Any]:
        return dict(json.loads(self.corral("device", "show", device_id, "-o", "json")))


def start_agent(agent: Host, root: Path, seed: Path) -> subprocess.Popen[Any]:
    root.mkdir(parents=True, exist_ok=True)
    with (root / "agent.log").open("ab") as out:
        return agent.popen(
            [
                str(BIN / "corral-agent"),
                "run",
                "--state-dir",
                str(root / "state"),
                "--seed",
                str(seed),
                "--simulated",
                str(root / "host"),
                "--poll-interval",
                "5",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def outbox_last_seq(root: Path) -> int:
    data = json.loads((root / "state" / "outbox.json").read_text())
    return int(data["next_seq"]) - 1


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab(N_AGENTS) as lab:
        yield lab


@pytest.mark.slow
@pytest.mark.parametrize("broker", ["embedded", "mosquitto"])
def test_agents_catch_up_exactly_once_after_cuts_and_loss(
    lab: Lab, tmp_path: Path, broker: str
) -> None:
    server = FleetServer(lab, tmp_path / "data")
    extra = ["--san", lab.server.address]
    if broker == "mosquitto":
        server.start_mosquitto(tmp_path / "mosquitto")
        extra += ["--mqtt-url", f"mqtts://{lab.server.address}:8883"]
    server.start(extra)
    try:
        server.corral("group", "create", "fleet", "--selector", "fleet=yes")
        server.corral("group", "set", "fleet", "--file", "/etc/fleet.conf=v1")
        token = json.loads(
            server.corral(
                "token", "create", "--uses", str(N_AGENTS), "--label", "fleet=yes", "-o", "json"
            )
        )
        seed = tmp_path / "seed.json"
        seed.write_text(json.dumps({"server": server.url, "token": token["token"]}))
        roots = [tmp_path / f"agent{i}" for i in range(N_AGENTS)]
        for agent, root in zip(lab.agents, roots, strict=True):
            start_agent(agent, root, seed)

        def behind() -> Any:
            """What keeps the fleet from being converged (nothing when it is)."""
            devices = server.devices()
            if len(devices) != N_AGENTS:
                return f"{len(devices)} devices"
            return [
                (d["id"], d["observed_generation"], d["generation"])
                for d in devices
                if d["observed_generation"] != d["generation"]
            ]

        wait_until("first convergence", lambda: not behind(), CONVERGE, 1.0, behind)
        first = {d["id"]: d["generation"] for d in server.devices()}

        # Three links are cut, two hosts lose 30 % of their packets; the spec changes twice.
        for agent in lab.agents[:3]:
            agent.link_down()
        for agent in lab.agents[3:]:
            agent.drop_percent(30)
        server.corral("group", "set", "fleet", "--file", "/etc/fleet.conf=v2")
        time.sleep(5)
        server.corral("group", "set", "fleet", "--file", "/etc/fleet.conf=v3", "--mode", "0600")
        latest = {d["id"]: d["generation"] for d in server.devices()}
        assert all(latest[i] == first[i] + 2 for i in first)
        time.sleep(20)
        cut = {d["id"]: d for d in server.devices()}
        behind_while_cut = [i for i, d in cut.items() if d["observed_generation"] < latest[i]]
        assert len(behind_while_cut) >= 3, "the cut devices could not have caught up"
        for agent in lab.agents[:3]:
            agent.link_up()

        wait_until(
            "convergence after the links came back", lambda: not behind(), CONVERGE, 1.0, behind
        )
        for agent in lab.agents[3:]:
            agent.clear_drop()

        # Every event each agent wrote is applied once: wait for the acks, then count.
        by_name = {}
        for root in roots:
            identity = json.loads((root / "state" / "identity.json").read_text())
            by_name[identity["device_id"]] = root

        def pending() -> dict[str, Any]:
            """Devices with a written status event the server has not applied exactly once."""
            late: dict[str, Any] = {}
            for device_id, root in by_name.items():
                written = outbox_last_seq(root)
                applied = server.show(device_id)["reported"]["status_events"]
                if applied != {"events": written, "distinct": written, "max_seq": written}:
                    late[device_id] = (written, applied)
            return late

        wait_until(
            "every written status event applied exactly once",
            lambda: not pending(),
            120,
            1.0,
            pending,
        )
        for device_id, root in by_name.items():
            shown = server.show(device_id)
            assert shown["reported"]["observed_generation"] == latest[device_id]
            assert {c["status"] for c in shown["reported"]["conditions"]} == {"Applied"}
            conf = root / "host" / "rootfs" / "etc" / "fleet.conf"
            assert conf.read_text() == "v3"
            assert conf.stat().st_mode & 0o777 == 0o600
            assert outbox_last_seq(root) >= 2
    finally:
        server.stop()
    assert "Traceback" not in server.log.read_text(), server.log.read_text()[-3000:]
