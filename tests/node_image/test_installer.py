"""The installer on a real loop-attached disk: the partition table, each filesystem's label
and contents, GRUB for BIOS and UEFI, the agent's state carried over; a run killed at each of
its steps leaves the live side untouched and the next run completes.

This kernel reads no partition tables, so the partitions are attached with
``losetup --offset/--sizelimit`` (``installer.loop_partitions``), the seam a real device
fills with its kernel's own ``/dev/vda2``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from node_image import grubenv, installer
from node_image.agent.crashpoints import ENV as CRASH_ENV
from node_image.image import layout
from tests.node_image.gpt_disk import sh, sha256, squashfs

MIB = 1 << 20
DISK_MIB = 400


def cleanup_after(disk: Path, under: Path) -> None:
    """What a power cut does to a killed installer: its mounts and the partition loop devices
    it stacked on the whole-disk loop device ``disk`` are gone."""
    for line in reversed(Path("/proc/self/mounts").read_text().splitlines()):
        point = line.split(" ")[1]
        if point.startswith(str(under) + "/"):
            subprocess.run(["umount", "-l", point], check=False)
    for line in sh("losetup", "--list", "--noheadings", "-O", "NAME,BACK-FILE").splitlines():
        name, _, backing = line.strip().partition(" ")
        if backing.strip() == str(disk):
            subprocess.run(["losetup", "-d", name], check=False)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A blank disk as a whole-disk loop device."""
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(DISK_MIB * MIB)
    loop = Path(sh("losetup", "--find", "--show", str(image)).strip())
    try:
        yield loop
    finally:
        cleanup_after(loop, tmp_path)
        subprocess.run(["losetup", "-d", str(loop)], check=False)


@pytest.fixture
def live(tmp_path: Path) -> tuple[Path, Path]:
    """The live side: a root squashfs, and an agent state dir with identity and outbox."""
    source = squashfs(tmp_path, "1")
    state = tmp_path / "agent-state"
    (state / "outbox").mkdir(parents=True)
    (state / "identity.json").write_text('{"device_id": "dev-1"}')
    (state / "key.pem").write_text("not a real key")
    (state / "key.pem").chmod(0o600)
    (state / "outbox" / "0001.json").write_text('{"status": 1}')
    return source, state


def snapshot(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): sha256(p) for p in directory.rglob("*") if p.is_file()}


@contextlib.contextmanager
def mounted(disk: Path, tmp_path: Path) -> Iterator[dict[str, Path]]:
    """The installed partitions: their loop devices, and the two ext4 ones mounted ro."""
    parts = installer.partition_table(disk)
    with installer.loop_partitions(disk, parts) as devices, contextlib.ExitStack() as undo:
        found = dict(devices)
        for name in (layout.PART_STATE, layout.PART_PERSISTENT):
            mount = tmp_path / f"check-{name}"
            mount.mkdir(exist_ok=True)
            sh("mount", "-o", "ro", str(devices[name]), str(mount))
            undo.callback(sh, "umount", str(mount))
            found[f"{name}:mount"] = mount
        yield found


def run_install(disk: Path, source: Path, state: Path, work: Path, crash_at: str = "") -> int:
    """The installer in a process of its own (so a crash point can kill it)."""
    code = (
        "import sys; from pathlib import Path; from node_image import installer\n"
        "installer.install(Path(sys.argv[1]), Path(sys.argv[2]), state_dir=Path(sys.argv[3]),"
        " partitions=installer.loop_partitions, work=Path(sys.argv[4]))\n"
    )
    env = {**os.environ, CRASH_ENV: crash_at}
    argv = [sys.executable, "-c", code, str(disk), str(source), str(state), str(work)]
    return subprocess.run(argv, env=env, capture_output=True, timeout=600).returncode


def check_installed(disk: Path, source: Path, state: Path, tmp_path: Path) -> None:
    table = json.loads(sh("sfdisk", "--json", str(disk)))["partitiontable"]
    assert table["label"] == "gpt"
    parts = table["partitions"]
    assert [p["name"] for p in parts] == [
        layout.PART_BIOS, layout.PART_EFI, layout.PART_STATE, layout.PART_PERSISTENT,
    ]  # fmt: skip
    assert parts[0]["type"] == installer.BIOS_BOOT_TYPE
    assert parts[0]["size"] * 512 == MIB
    assert parts[1]["type"] == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"  # EFI system
    assert parts[1]["size"] * 512 == installer.EFI_MIB * MIB
    state_mib = installer.state_mib_for(source.stat().st_size)
    assert parts[2]["size"] * 512 == state_mib * MIB
    end = parts[3]["start"] + parts[3]["size"]
    assert end * 512 > (DISK_MIB - 2) * MIB  # the persistent partition takes the rest
    with open(disk, "rb") as f:
        mbr = f.read(512)
        f.seek(parts[0]["start"] * 512)
        core = f.read(MIB)
    assert mbr[510:512] == b"\x55\xaa" and mbr[:440].strip(b"\0")  # GRUB's boot.img
    assert core.rstrip(b"\0"), "no GRUB core image in the BIOS boot partition"
    with mounted(disk, tmp_path) as found:
        for name in (layout.PART_EFI, layout.PART_STATE, layout.PART_PERSISTENT):
            label = sh("blkid", "-p", "-o", "value", "-s", "LABEL", str(found[name])).strip()
            assert label == layout.FS_LABELS[name]
        efi = f"{found[layout.PART_EFI]}@@0"
        assert "BOOTX64  EFI" in sh("mdir", "-i", efi, "::/EFI/BOOT")
        sh("mcopy", "-i", efi, "::/EFI/BOOT/BOOTX64.EFI", str(tmp_path / "BOOTX64.EFI"))
        assert (tmp_path / "BOOTX64.EFI").read_bytes()[:2] == b"MZ"
        st = found[f"{layout.PART_STATE}:mount"]
        assert sha256(st / "slots" / "A") == sha256(source)
        assert not (st / "slots" / "A.tmp").exists()
        assert grubenv.parse((st / "grubenv").read_bytes()) == {"corral_slot": "A"}
        assert (st / "grub" / "grub.cfg").read_bytes() == installer.REPO_GRUB_CFG.read_bytes()
        assert (st / "grub" / "i386-pc" / "normal.mod").is_file()
        persistent = found[f"{layout.PART_PERSISTENT}:mount"]
        copied = persistent / installer.PERSISTENT_AGENT
        assert snapshot(copied) == snapshot(state)
        assert (copied / "key.pem").stat().st_mode & 0o777 == 0o600
        assert (copied.stat().st_mode & 0o777) == 0o700
        for sub in installer.PERSISTENT_DIRS:
            assert (persistent / sub).is_dir()


def test_install_to_a_blank_disk(disk: Path, live: tuple[Path, Path], tmp_path: Path) -> None:
    source, state = live
    before = snapshot(state), sha256(source)
    result = installer.install(
        disk,
        source,
        state_dir=state,
        partitions=installer.loop_partitions,
        work=tmp_path,
        expected_sha256=sha256(source),
    )
    assert result.slot_sha256 == sha256(source)
    check_installed(disk, source, state, tmp_path)
    assert (snapshot(state), sha256(source)) == before
    assert not list(tmp_path.glob("corral-install-*"))


@pytest.mark.parametrize("crash_at", installer.CRASH_POINTS)
def test_killed_install_leaves_live_untouched_and_rerun_completes(
    crash_at: str, disk: Path, live: tuple[Path, Path], tmp_path: Path
) -> None:
    source, state = live
    before = snapshot(state), sha256(source)
    assert run_install(disk, source, state, tmp_path, crash_at) == -9
    cleanup_after(disk, tmp_path)
    assert (snapshot(state), sha256(source)) == before
    assert run_install(disk, source, state, tmp_path) == 0
    check_installed(disk, source, state, tmp_path)
    assert (snapshot(state), sha256(source)) == before


def test_a_wrong_manifest_sha256_is_refused(
    disk: Path, live: tuple[Path, Path], tmp_path: Path
) -> None:
    source, state = live
    with pytest.raises(installer.InstallError, match="manifest says"):
        installer.install(
            disk, source, partitions=installer.loop_partitions, expected_sha256="0" * 64
        )


def test_refused_disks(tmp_path: Path, live: tuple[Path, Path]) -> None:
    source, _ = live
    not_block = tmp_path / "file.img"
    not_block.write_bytes(b"\0" * MIB)
    with pytest.raises(installer.InstallError, match="not a block device"):
        installer.install(not_block, source, partitions=installer.loop_partitions)
    small = tmp_path / "small.img"
    with open(small, "wb") as f:
        f.truncate(64 * MIB)
    loop = sh("losetup", "--find", "--show", str(small)).strip()
    try:
        with pytest.raises(installer.InstallError, match="needs"):
            installer.install(Path(loop), source, partitions=installer.loop_partitions)
        table = subprocess.run(["sfdisk", "--json", loop], capture_output=True, text=True)
        assert table.returncode != 0 and not table.stdout  # nothing written
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)


def test_partition_device_names() -> None:
    assert installer.partition_device(Path("/dev/vda"), 2) == Path("/dev/vda2")
    assert installer.partition_device(Path("/dev/sda"), 4) == Path("/dev/sda4")
    assert installer.partition_device(Path("/dev/nvme0n1"), 3) == Path("/dev/nvme0n1p3")
    assert installer.partition_device(Path("/dev/mmcblk0"), 1) == Path("/dev/mmcblk0p1")
