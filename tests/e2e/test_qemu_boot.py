"""The node image on a real (virtual) machine: a base ISO built by ``corral image build-base``,
seeded for a token of a real server on 127.0.0.1, booted in QEMU (TCG), registers and shows
online with the machine's own facts, under SeaBIOS from a CD and under OVMF (UEFI) from a
USB stick (the ISO's bytes on ``usb-storage`` behind a ``qemu-xhci`` controller).

The base ISO comes from the build cache (``~/.cache/corral``; a cold build takes minutes).
A failed boot keeps its serial console log under ``qemu-logs/`` in pytest's temp root.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from node_image.image import layout
from tests.qemu.fleet import build_base_iso, guest_server, guest_url, wait_online
from tests.qemu.machine import QEMU_PRODUCT_NAME, Firmware, Machine, Medium
from tests.qemu.seeding import seed_document, seed_iso, slot_extent
from tests.server_process import Server

pytestmark = [pytest.mark.slow, pytest.mark.qemu, pytest.mark.timeout(3600)]

#: From QEMU's start to the device online. About 2 min alone under TCG; many times that when
#: the two shared cores are busy with other tests (TCG gets what CPU is left).
BOOT_TIMEOUT = 1500


@pytest.fixture(scope="session")
def base_iso(tmp_path_factory: pytest.TempPathFactory) -> Path:
    iso, _ = build_base_iso(tmp_path_factory.mktemp("image") / "base.iso")
    return iso


@pytest.fixture(scope="session")
def qemu_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "qemu-logs"


@pytest.fixture
def vm_server(tmp_path: Path) -> Iterator[Server]:
    server = guest_server(tmp_path)
    try:
        yield server
    finally:
        server.stop_all()
    problems = server.problems()
    assert not problems, problems


def test_base_iso_carries_an_empty_seed_slot_and_the_os_manifest(base_iso: Path) -> None:
    import pycdlib

    offset, length = slot_extent(base_iso)
    assert length == layout.SEED_SLOT_SIZE
    with open(base_iso, "rb") as f:
        f.seek(offset)
        assert json.loads(f.read(length)) == {}
    manifest = json.loads(base_iso.with_name("base.os.json").read_text())
    squashfs = base_iso.with_name("base.os.squashfs")
    assert manifest["size"] == squashfs.stat().st_size
    pc = pycdlib.PyCdlib()
    pc.open(str(base_iso))
    try:
        inside = pc.get_record(rr_path=layout.OS_MANIFEST_PATH)
        assert inside.get_data_length() > 0
        for path in (layout.LIVE_KERNEL, layout.LIVE_INITRD, layout.LIVE_ROOT):
            pc.get_record(rr_path=path)
    finally:
        pc.close()


def test_the_root_holds_the_bytecode_the_agents_unit_imports(base_iso: Path) -> None:
    """The unit runs the agent with PYTHONOPTIMIZE=2: the standard library and the agent's venv
    carry ``.opt-2.pyc`` files and no plain ones, so no boot compiles a module (tens of
    seconds under TCG)."""
    squashfs = base_iso.with_name("base.os.squashfs")
    listing = subprocess.run(
        ["unsquashfs", "-l", str(squashfs)], capture_output=True, text=True, check=True
    ).stdout
    agent = re.compile(
        r"/site-packages/node_image/agent/__pycache__/cli\.cpython-3\d+\.opt-2\.pyc$"
    )
    assert any(agent.search(line) for line in listing.splitlines())
    imported = re.compile(r"/(usr/lib/python3[^/]*|opt/corral)/.*\.cpython-3\d+\.pyc$")
    plain = [line for line in listing.splitlines() if imported.search(line)]
    assert not plain, plain[:5]


def initramfs_modules(initrd: bytes) -> set[str]:
    """The kernel modules (``name.ko``) in a zstd-compressed newc initramfs."""
    cpio = subprocess.run(["zstd", "-dc"], input=initrd, capture_output=True, check=True).stdout
    names, at = set(), 0
    while (at := cpio.find(b"070701", at)) >= 0:
        size, name_size = int(cpio[at + 54 : at + 62], 16), int(cpio[at + 94 : at + 102], 16)
        name = cpio[at + 110 : at + 110 + name_size - 1].decode()
        names.add(name.rsplit("/", 1)[-1])
        at = (at + 110 + name_size + 3) & ~3
        at = (at + size + 3) & ~3
    return {n for n in names if n.endswith(".ko")}


def test_the_initramfs_has_the_boot_media_drivers_and_no_network_filesystems(
    base_iso: Path,
) -> None:
    """build/overlay/etc/initramfs-tools/hooks/corral-trim: no NFS, nor filesystems no boot
    path mounts, nor network drivers of uncommon NICs; still every driver of a local boot
    medium, of the installed disk's layout, and the common NICs' drivers with the modules they
    need (the network comes up sooner with them)."""
    import pycdlib

    pc = pycdlib.PyCdlib()
    pc.open(str(base_iso))
    try:
        with pc.open_file_from_iso(rr_path=layout.LIVE_INITRD) as f:
            modules = initramfs_modules(f.read())
    finally:
        pc.close()
    for needed in (
        "sr_mod.ko", "ata_piix.ko", "ahci.ko", "nvme.ko", "virtio_blk.ko", "usb-storage.ko",
        "uas.ko", "xhci-pci.ko", "sd_mod.ko", "mmc_block.ko", "isofs.ko", "squashfs.ko",
        "overlay.ko", "loop.ko", "ext4.ko", "vfat.ko", "e1000.ko", "e1000e.ko", "r8169.ko",
        "realtek.ko", "virtio_net.ko", "net_failover.ko", "igb.ko", "tg3.ko", "r8152.ko",
        "usbnet.ko", "mii.ko", "libphy.ko",
    ):  # fmt: skip
        assert needed in modules, needed
    for dropped in (
        "nfs.ko", "sunrpc.ko", "xfs.ko", "btrfs.ko", "f2fs.ko", "bnxt_en.ko", "skfp.ko",
        "ppp_generic.ko", "mlx5_core.ko",
    ):  # fmt: skip
        assert dropped not in modules, dropped


@pytest.mark.parametrize(
    ("firmware", "medium", "rtc"),
    # The SeaBIOS boot also starts at 1970 (a board without an RTC): systemd moves the clock
    # to its own build date at most, still before the image's, so the agent must find the
    # clock impossible, take the time from the server over the pinned CA and register.
    [("bios", "cdrom", "1970-01-01"), ("uefi", "usb", None)],
    ids=["seabios-cd-clock-1970", "ovmf-usb-stick"],
)
def test_seeded_iso_boots_registers_and_shows_online_with_the_machines_facts(
    base_iso: Path,
    vm_server: Server,
    tmp_path: Path,
    qemu_logs: Path,
    firmware: Firmware,
    medium: Medium,
    rtc: str | None,
) -> None:
    token = vm_server.create_token(labels={"site": "qemu"}, max_uses=1)
    seeded = tmp_path / "seeded.iso"
    seed_iso(base_iso, seeded, seed_document(guest_url(vm_server), token["token"]))
    assert seeded.stat().st_size == base_iso.stat().st_size

    machine = Machine(
        seeded,
        tmp_path / "vm",
        firmware=firmware,
        medium=medium,
        name=firmware,
        logs_dir=qemu_logs,
        ports=(vm_server.port, vm_server.mqtt_port),
        rtc_base=rtc,
    )
    with machine:
        device = wait_online(vm_server, BOOT_TIMEOUT, detail=lambda: machine.console()[-600:])

    assert device["online"] is True
    if rtc is not None:  # the guest's clock really was wrong: systemd had to move it
        assert "System time before build time" in machine.console()
    assert device["labels"].get("site") == "qemu"
    assert device["facts"]["dmi"]["product_name"] == QEMU_PRODUCT_NAME
    tokens = vm_server.checked("GET", f"/api/v1/tokens/{token['id']}")
    assert tokens["uses"] == 1
