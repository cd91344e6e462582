"""Acceptance for OS updates, end to end: a real server whose mirror holds real squashfs
images (imported as kind ``os-image``, signed by its update-signing key), real agent
processes (``corral-agent run`` on ``SimulatedHost``, which re-executes itself on a
simulated reboot into the slot GRUB's logic chose), the group's ``os.version`` as the only
input. The device reports through the real outbox; the test reads the server's view."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from node_image import grubenv
from tests.node_image.gpt_disk import squashfs
from tests.node_image.os_rig import FAILING, HEALTHY
from tests.node_image.test_agent_run import write_seed
from tests.support import Server, device, set_group, start_agent
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(240)


def import_image(server: Server, image: Path, version: str) -> dict[str, Any]:
    """``corral artifact import --kind os-image``: the mirror stores, hashes and signs it."""
    imported = server.corral(
        "artifact", "import", "-o", "json", "--kind", "os-image", "--name", "corral-os",
        "--version", version, str(image),
    )  # fmt: skip
    data: dict[str, Any] = json.loads(imported.stdout)
    return data


class Device:
    def __init__(self, server: Server, tmp_path: Path, name: str, installed: str) -> None:
        self.server = server
        self.dir = tmp_path / name
        self.state = self.dir / "state"
        self.sim = self.dir / "device"
        version_file = self.sim / "rootfs" / "etc" / "corral" / "os-version"
        version_file.parent.mkdir(parents=True)
        version_file.write_text(installed + "\n")
        self.seed = write_seed(server, self.dir / "seed.json", case=name)
        self.log = self.dir / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = start_agent(self.state, self.seed, self.sim, self.log)

    @property
    def device_id(self) -> str:
        return str(json.loads((self.state / "identity.json").read_text())["device_id"])

    def os_condition(self) -> dict[str, Any] | None:
        if not (self.state / "identity.json").exists():
            return None
        shown = device(self.server, self.device_id)
        found = [c for c in shown["reported"]["conditions"] if c["type"] == "os"]
        return found[0] if found else None

    def wait_os(self, *statuses: str, timeout: float = 120) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            c = self.os_condition()
            return c if c is not None and c["status"] in statuses else None

        return wait_until(
            f"os {statuses}", done, timeout, 0.3, lambda: (self.os_condition(), self.tail())
        )

    def boot(self) -> dict[str, Any]:
        """The simulated machine's boot record (none yet: its first boot, into A)."""
        path = self.sim / "boot.json"
        record: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        return {"slot": "A", "boots": 1, **record}

    def grubenv(self) -> dict[str, str]:
        path = self.sim / "boot" / "grubenv"
        return grubenv.parse(path.read_bytes()) if path.exists() else {}

    def tail(self) -> str:
        return self.log.read_text()[-3000:] if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextmanager
def devices(server: Server, tmp_path: Path, **installed: str) -> Iterator[dict[str, Device]]:
    made = {name: Device(server, tmp_path, name, version) for name, version in installed.items()}
    try:
        for d in made.values():
            d.start()
        yield made
    finally:
        for d in made.values():
            d.stop()


def test_an_os_update_goes_a_to_b_and_reports_healthy_and_a_failing_check_rolls_back(
    server: Server, tmp_path: Path
) -> None:
    import_image(server, squashfs(tmp_path, "2.0", HEALTHY), "2.0")
    import_image(server, squashfs(tmp_path, "2.1", FAILING), "2.1")
    with devices(server, tmp_path, good="1.0", bad="1.0") as d:
        set_group(server, "good", "case=good", {"os": {"version": "2.0"}})
        set_group(server, "bad", "case=bad", {"os": {"version": "2.1"}})

        healthy = d["good"].wait_os("Healthy")
        assert healthy["message"] == "os 2.0 on slot B"
        assert healthy["version"] == "2.0"  # what device show and list print
        assert d["good"].boot()["slot"] == "B" and d["good"].boot()["boots"] == 2
        assert d["good"].grubenv() == {"corral_slot": "B"}

        rolled = d["bad"].wait_os("RolledBack")
        assert rolled["reason"] == "HealthCheckFailed"
        assert "kiosk.service did not start" in rolled["message"]
        assert d["bad"].boot()["slot"] == "A" and d["bad"].boot()["boots"] == 3
        assert d["bad"].grubenv() == {"corral_slot": "A"}
        assert rolled["version"] == "1.0"  # the old slot's version runs again
        assert device(server, d["good"].device_id)["in_sync"]


def test_tampered_unsigned_and_older_images_are_refused_and_nothing_is_written(
    server: Server, tmp_path: Path
) -> None:
    tampered = import_image(server, squashfs(tmp_path, "3.0", HEALTHY), "3.0")
    stored = server.data_dir / "artifacts" / tampered["sha256"]
    body = bytearray(stored.read_bytes())
    body[-100] ^= 0xFF  # the mirror's copy changes after it was signed
    stored.write_bytes(bytes(body))
    import_image(server, squashfs(tmp_path, "3.1", HEALTHY), "3.1")
    import_image(server, squashfs(tmp_path, "1.5", HEALTHY), "1.5")
    with devices(server, tmp_path, tampered="2.0", unsigned="2.0", older="2.0") as d:
        # A device that trusts another signer sees the mirror's images as unsigned.
        wait_until("registration", lambda: (d["unsigned"].state / "update-signing.pub").exists())
        other = Ed25519PrivateKey.generate().public_key()
        raw = other.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        (d["unsigned"].state / "update-signing.pub").write_text(base64.b64encode(raw).decode())
        set_group(server, "tampered", "case=tampered", {"os": {"version": "3.0"}})
        set_group(server, "unsigned", "case=unsigned", {"os": {"version": "3.1"}})
        set_group(server, "older", "case=older", {"os": {"version": "1.5"}})

        reasons = {name: dev.wait_os("Refused")["reason"] for name, dev in d.items()}
        assert reasons == {"tampered": "Tampered", "unsigned": "BadSignature", "older": "Downgrade"}
        for dev in d.values():
            assert not (dev.sim / "boot" / "slots" / "B").exists(), "nothing written"
            assert "corral_next" not in dev.grubenv()
            assert dev.boot()["boots"] == 1

        # The operator allows the downgrade: now it is installed.
        set_group(
            server, "older", "case=older", {"os": {"version": "1.5", "allow_downgrade": True}}
        )
        assert d["older"].wait_os("Healthy")["message"] == "os 1.5 on slot B"
