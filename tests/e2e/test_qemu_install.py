"""Install to disk and A/B OS updates on a real (virtual) machine (issue 8, acceptance 2 and 3).

1. A seeded ISO with ``install_disk=/dev/vda`` boots from CD with a blank virtio disk: the
   agent registers, installs the live system to the disk and reboots (QEMU runs with
   ``-no-reboot``, so the reboot ends it).
2. QEMU starts again with NO CD: GRUB boots slot A from the disk (``boot=corral``), and the
   agent reports as the same device: one device on the server, the same id, the token used once.
3. On that installed device, an OS image whose health check fails (``build-base --overlay``
   with a failing ``/etc/corral/health-check``): the agent writes slot B and reboots; B boots,
   fails its check, and the device returns to A and reports ``RolledBack``. Then an image with
   a newer version: it reboots into slot B and reports ``Healthy`` with that version.

Every reboot ends QEMU and the test powers the machine on again from the same disk. The
serial console of a failed boot is kept under ``qemu-logs/``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.qemu.fleet import BUILD_TIMEOUT, guest_server, guest_url, wait_registered
from tests.qemu.machine import Machine, user_net
from tests.qemu.seeding import seed_document, seed_iso
from tests.server_process import CORRAL, Server, tree_env
from tests.support import device, set_group
from tests.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.qemu, pytest.mark.timeout(7200)]

REPO = Path(__file__).resolve().parents[2]
#: One TCG boot is about 2 min alone; the shared cores make it slower.
BOOT_TIMEOUT = 900
#: Download (~170 MB over user-net), slot write and verify, then the reboot.
UPDATE_TIMEOUT = 1500
DISK_MIB = 4096
FAILING_CHECK = "#!/bin/sh\necho 'health check: this image is broken on purpose' >&2\nexit 1\n"


def build(out: Path, version: str, overlay: Path | None = None) -> Path:
    """``corral image build-base`` (stages from the build cache); the ISO."""
    argv = [*CORRAL, "image", "build-base", "--out", str(out), "--os-version", version]
    if overlay is not None:
        argv += ["--overlay", str(overlay)]
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=BUILD_TIMEOUT, env=tree_env()
    )
    if result.returncode != 0:
        raise AssertionError(f"build-base failed ({result.returncode}):\n{result.stderr}")
    return out


@dataclass
class DiskMachine(Machine):
    """The machine with its own virtio disk (kept across power cycles) and, optionally, the
    seeded ISO as a CD."""

    disk: Path = Path()
    with_cd: bool = True

    def argv(self) -> list[str]:
        argv = ["qemu-system-x86_64", "-accel", "tcg", "-smp", str(self.cpus)]
        argv += ["-m", str(self.memory_mb), "-nographic", "-monitor", "none"]
        argv += ["-serial", f"file:{self.serial_log}", "-no-reboot"]
        argv += ["-nic", user_net(self.ports)]
        argv += ["-drive", f"file={self.disk},format=raw,if=virtio"]
        if self.with_cd:
            argv += ["-drive", f"file={self.image},media=cdrom,readonly=on,if=ide,index=2"]
            argv += ["-boot", "order=d"]
        else:
            argv += ["-boot", "order=c"]
        return argv

    def wait_exit(self, timeout: float, what: str) -> None:
        """Until the guest reboots (``-no-reboot`` ends QEMU)."""
        wait_until(what, lambda: not self.running(), timeout, 2.0, lambda: self.console()[-800:])


@pytest.fixture
def vm_server(tmp_path: Path) -> Iterator[Server]:
    server = guest_server(tmp_path)
    try:
        yield server
    finally:
        server.stop_all()


def os_condition(server: Server, device_id: str) -> dict[str, Any] | None:
    shown = device(server, device_id)
    found = [c for c in shown["reported"]["conditions"] if c["type"] == "os"]
    return found[0] if found else None


def import_os(server: Server, iso: Path, version: str) -> None:
    squashfs = iso.with_name(iso.stem + ".os.squashfs")
    server.corral(
        "artifact", "import", "--kind", "os-image", "--name", "corral-os",
        "--version", version, str(squashfs),
    )  # fmt: skip


def cmdline_slots(console: str) -> list[str]:
    return re.findall(r"Command line: .*\bboot=corral\b.*\bcorral\.slot=([AB])", console)


def test_install_to_disk_then_ab_updates_with_rollback(
    vm_server: Server, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    logs = tmp_path_factory.getbasetemp() / "qemu-logs"
    images = tmp_path / "images"
    images.mkdir()
    base = build(images / "base.iso", "1")
    token = vm_server.create_token(labels={"site": "qemu-install"}, max_uses=1)
    seeded = tmp_path / "seeded.iso"
    seed = seed_document(guest_url(vm_server), token["token"], install_disk="/dev/vda")
    seed_iso(base, seeded, seed)
    disk = tmp_path / "disk.raw"
    with open(disk, "wb") as f:
        f.truncate(DISK_MIB << 20)
    boots = 0

    def machine(with_cd: bool) -> DiskMachine:
        nonlocal boots
        boots += 1
        return DiskMachine(
            seeded, tmp_path / "vm", name=f"boot{boots}", logs_dir=logs, disk=disk,
            with_cd=with_cd, ports=(vm_server.port, vm_server.mqtt_port),
        )  # fmt: skip

    # 1. Live from CD: register, install, reboot.
    live = machine(with_cd=True)
    with live:
        wait_registered(vm_server, BOOT_TIMEOUT, detail=lambda: live.console()[-800:])
        live.wait_exit(BOOT_TIMEOUT, "the live system to install and reboot")
        assert "boot=live" in live.console() and cmdline_slots(live.console()) == []
    [registered] = vm_server.checked("GET", "/api/v1/devices")["items"]
    device_id = registered["id"]

    # 2. From the disk alone: the same device.
    installed = machine(with_cd=False)
    with installed:
        started = time.time()
        installed.wait_console(r"Command line: .*boot=corral", BOOT_TIMEOUT)
        assert cmdline_slots(installed.console()) == ["A"]

        def reported_again() -> dict[str, Any] | None:
            shown = device(vm_server, device_id)
            at = shown["reported"].get("status_at") or 0
            return shown if shown["online"] and at > started else None

        shown = wait_until(
            "the installed system to report", reported_again, BOOT_TIMEOUT, 2.0,
            lambda: installed.console()[-800:],
        )  # fmt: skip
        assert shown is not None
        assert [d["id"] for d in vm_server.checked("GET", "/api/v1/devices")["items"]] == [
            device_id
        ]
        assert vm_server.checked("GET", f"/api/v1/tokens/{token['id']}")["uses"] == 1
        assert shown["labels"].get("site") == "qemu-install"

        # 3a. An image whose health check fails: B boots, fails, the device returns to A.
        overlay = tmp_path / "failing-overlay"
        shutil.copytree(REPO / "build" / "overlay", overlay, symlinks=True)
        (overlay / "etc/corral/health-check").write_text(FAILING_CHECK)
        broken = build(images / "broken.iso", "3", overlay)
        import_os(vm_server, broken, "3")
        set_group(vm_server, "qemu", "site=qemu-install", {"os": {"version": "3"}})
        installed.wait_exit(UPDATE_TIMEOUT, "the device to write slot B and reboot")
    trying = machine(with_cd=False)
    with trying:
        trying.wait_console(r"Command line: .*boot=corral", BOOT_TIMEOUT)
        assert cmdline_slots(trying.console()) == ["B"]
        trying.wait_exit(BOOT_TIMEOUT, "the failed slot B to reboot into A")
    back = machine(with_cd=False)
    with back:
        back.wait_console(r"Command line: .*boot=corral", BOOT_TIMEOUT)
        assert cmdline_slots(back.console()) == ["A"]

        def rolled_back() -> dict[str, Any] | None:
            c = os_condition(vm_server, device_id)
            return c if c is not None and c["status"] == "RolledBack" else None

        rolled = wait_until(
            "RolledBack", rolled_back, BOOT_TIMEOUT, 2.0, lambda: back.console()[-800:]
        )
        assert "3" in json.dumps(rolled)

        # 3b. A newer, healthy image: slot B, Healthy, the new version.
        newer = build(images / "v2.iso", "2")
        import_os(vm_server, newer, "2")
        set_group(vm_server, "qemu", "site=qemu-install", {"os": {"version": "2"}})
        back.wait_exit(UPDATE_TIMEOUT, "the device to write slot B and reboot")
    updated = machine(with_cd=False)
    with updated:
        updated.wait_console(r"Command line: .*boot=corral", BOOT_TIMEOUT)
        assert cmdline_slots(updated.console()) == ["B"]

        def healthy() -> dict[str, Any] | None:
            c = os_condition(vm_server, device_id)
            return c if c is not None and c["status"] == "Healthy" else None

        good = wait_until("Healthy", healthy, BOOT_TIMEOUT, 2.0, lambda: updated.console()[-800:])
        assert good is not None
        assert good.get("version") == "2" or "os 2 on slot B" in good["message"], good
    assert [d["id"] for d in vm_server.checked("GET", "/api/v1/devices")["items"]] == [device_id]
