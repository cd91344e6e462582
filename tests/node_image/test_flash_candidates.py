"""The flash candidate filter against recorded udev property sets, and the resolution of the
disks the running system uses (through sysfs and /proc, on this machine and on a recorded tree)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from node_image.image.candidates import BlockDevice, parse_properties, refusals
from node_image.image.system_disks import (
    SystemDisks,
    parse_mountinfo,
    parse_swaps,
    read_system_disks,
    whole_disks,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "udev"
MiB = 1 << 20
NOTHING_USED = SystemDisks(system={}, busy={})


def recorded(name: str) -> BlockDevice:
    return parse_properties((FIXTURES / f"{name}.properties").read_text())


def test_every_recorded_property_set_is_judged() -> None:
    verdicts = {
        p.stem: refusals(parse_properties(p.read_text()), NOTHING_USED, 16 * MiB)
        for p in sorted(FIXTURES.glob("*.properties"))
    }
    assert set(verdicts) == {"qemu-sda", "qemu-sdb", "qemu-vda", "host-loop"}
    assert verdicts["qemu-sdb"] == []
    assert verdicts["qemu-sda"] == ["is neither removable nor on the USB bus (bus: ata)"]
    assert verdicts["qemu-vda"] == ["is neither removable nor on the USB bus (bus: virtio)"]
    assert verdicts["host-loop"] == ["is a loop device (accepted only when named with --device)"]


def test_the_usb_stick_shows_its_model_size_serial_and_bus() -> None:
    stick = recorded("qemu-sdb")
    assert (stick.node, stick.name, stick.size_bytes, stick.removable) == (
        "/dev/sdb",
        "sdb",
        64 * MiB,
        True,
    )
    assert (stick.model, stick.serial, stick.bus) == (
        "QEMU HARDDISK",
        "1-0000:00:04.0-1",
        "usb",
    )


def test_the_usb_bus_alone_makes_a_candidate_and_removable_alone_too() -> None:
    stick = recorded("qemu-sdb")
    fixed_usb = BlockDevice(stick.properties, stick.size_bytes, removable=False)
    assert refusals(fixed_usb, NOTHING_USED, MiB) == []
    sata = recorded("qemu-sda")
    removable_sata = BlockDevice(sata.properties, sata.size_bytes, removable=True)
    assert refusals(removable_sata, NOTHING_USED, MiB) == []


def test_the_root_disk_is_refused_whatever_else_it_is() -> None:
    vda = recorded("qemu-vda")
    as_root = SystemDisks(system={"vda": "/"}, busy={"vda": "mounted at /"})
    why = refusals(vda, as_root, MiB, explicit=True)
    assert "holds the running system (/)" in why and "is mounted at /" in why
    # Even a removable USB stick is refused when it holds / or /boot (a live system).
    stick = recorded("qemu-sdb")
    assert refusals(stick, SystemDisks(system={"sdb": "/boot"}, busy={}), MiB) == [
        "holds the running system (/boot)"
    ]


@pytest.mark.parametrize(
    "use", ["mounted at /media/stick", "in use as swap (/dev/sdb2)", "held by dm-0"]
)
def test_a_stick_in_use_is_refused(use: str) -> None:
    busy = SystemDisks(system={}, busy={"sdb": use})
    assert refusals(recorded("qemu-sdb"), busy, MiB) == [f"is {use}"]


def test_a_stick_smaller_than_the_image_is_refused() -> None:
    why = refusals(recorded("qemu-sdb"), NOTHING_USED, 64 * MiB + 1)
    assert why == [f"is smaller than the image ({64 * MiB} < {64 * MiB + 1} bytes)"]
    assert refusals(recorded("qemu-sdb"), NOTHING_USED, 64 * MiB) == []


def test_a_partition_an_empty_reader_and_a_read_only_stick_are_refused() -> None:
    stick = recorded("qemu-sdb")
    partition = BlockDevice({**stick.properties, "DEVTYPE": "partition"}, MiB * 63, True)
    assert refusals(partition, NOTHING_USED, MiB) == ["is a partition, not a whole disk"]
    empty = BlockDevice(stick.properties, 0, True)
    assert refusals(empty, NOTHING_USED, MiB) == ["has no medium (size 0)"]
    locked = BlockDevice(stick.properties, stick.size_bytes, True, read_only=True)
    assert refusals(locked, NOTHING_USED, MiB) == ["is read-only"]


def test_a_loop_device_passes_only_when_named() -> None:
    loop = recorded("host-loop")
    assert loop.bus == "loop"
    assert refusals(loop, NOTHING_USED, MiB, explicit=True) == []
    assert refusals(loop, SystemDisks({}, {"loop0": "mounted at /mnt"}), MiB, explicit=True) == [
        "is mounted at /mnt"
    ]


def test_mountinfo_and_swaps_are_parsed_with_their_escapes() -> None:
    mounts = parse_mountinfo(
        "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
        "90 27 0:55 / /media/my\\040stick rw - overlay overlay rw,lowerdir=/a:/b,upperdir=/c\n"
    )
    assert [(m.devnum, m.mount_point, m.fs_type, m.source) for m in mounts] == [
        ("254:0", "/", "ext4", "/dev/vda"),
        ("0:55", "/media/my stick", "overlay", "overlay"),
    ]
    assert mounts[1].super_options == "rw,lowerdir=/a:/b,upperdir=/c"
    swaps = "Filename\tType\tSize\tUsed\tPriority\n/dev/sdb2 partition 1024 0 -2\n"
    assert parse_swaps(swaps) == ["/dev/sdb2"]


def _node(sys_root: Path, path: str, dev: str, partition: bool = False) -> Path:
    node = sys_root / path.lstrip("/")
    node.mkdir(parents=True)
    (node / "dev").write_text(dev + "\n")
    if partition:
        (node / "partition").write_text("1\n")
    link = sys_root / "dev" / "block" / dev
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(node)
    return node


def test_a_dm_device_on_partitions_resolves_to_its_whole_disks(tmp_path: Path) -> None:
    """LVM over sda2 and a RAID member on nvme0n1p1: / on dm-0 holds both disks."""
    _node(tmp_path, "devices/pci/ata1/block/sda", "8:0")
    sda2 = _node(tmp_path, "devices/pci/ata1/block/sda/sda2", "8:2", partition=True)
    _node(tmp_path, "devices/pci/nvme/block/nvme0n1", "259:0")
    nvme_p1 = _node(tmp_path, "devices/pci/nvme/block/nvme0n1/nvme0n1p1", "259:1", True)
    dm = _node(tmp_path, "devices/virtual/block/dm-0", "253:0")
    (dm / "slaves").mkdir()
    (dm / "slaves" / "sda2").symlink_to(sda2)
    (dm / "slaves" / "nvme0n1p1").symlink_to(nvme_p1)
    assert whole_disks("253:0", tmp_path) == {"sda", "nvme0n1"}
    assert whole_disks("8:2", tmp_path) == {"sda"}
    assert whole_disks("8:0", tmp_path) == {"sda"}
    assert whole_disks("9:9", tmp_path) == set()


def _findmnt(*args: str) -> str:
    return subprocess.run(
        ["findmnt", "-n", *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def _disk_backing_root() -> str:
    """What backs / on this machine, found with util-linux rather than our code (an overlay
    root, as in a container, through its upper directory)."""
    devnum = _findmnt("-o", "MAJ:MIN", "--target", "/").split()[0]
    if devnum.startswith("0:") and _findmnt("-o", "FSTYPE", "/") == "overlay":
        options = dict(o.partition("=")[::2] for o in _findmnt("-o", "OPTIONS", "/").split(","))
        devnum = _findmnt("-o", "MAJ:MIN", "--target", options["upperdir"]).split()[0]
    parent = subprocess.run(
        ["lsblk", "-n", "-d", "-o", "PKNAME", f"/dev/block/{devnum}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return parent or os.path.basename(os.path.realpath(f"/sys/dev/block/{devnum}"))


def test_this_machines_root_disk_is_found_as_the_running_system() -> None:
    disks = read_system_disks()
    root = _disk_backing_root()
    assert disks.system[root] == "/"
    assert disks.busy[root].startswith("mounted at ")
