"""The installed disk's ``grub.cfg`` makes the decision ``node_image.boot.choose_slot`` makes.

A disk installed by the real installer is booted in QEMU (SeaBIOS, and once OVMF) up to GRUB's
"Booting `Corral node (slot X)'" line, for each case: the slot GRUB picked and the counter it
saved in ``grubenv`` (read back with ``grub-editenv``) must be what ``choose_slot`` says. The
slot images hold no kernel, so each boot stops there; only GRUB runs.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from node_image import boot, grubenv, installer
from node_image.image import layout
from tests.node_image.gpt_disk import sh, squashfs
from tests.node_image.test_installer import cleanup_after
from tests.qemu.machine import OVMF_CODE, OVMF_VARS
from tests.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.qemu]

MIB = 1 << 20
BOOTING = re.compile(r"Booting `Corral node \(slot ([AB])\)'")

CASES: list[dict[str, str]] = [
    {},
    {"corral_slot": "B"},
    {"corral_slot": "A", "corral_next": "B", "corral_tries": "3"},
    {"corral_slot": "A", "corral_next": "B", "corral_tries": "1"},
    {"corral_slot": "A", "corral_next": "B", "corral_tries": "0"},
    {"corral_slot": "B", "corral_next": "A", "corral_tries": "9"},
    {"corral_slot": "B", "corral_next": "B", "corral_tries": "3"},
    {"corral_slot": "A", "corral_next": "B", "corral_tries": "x"},
    {"corral_slot": "A", "corral_next": "C", "corral_tries": "2"},
    {"corral_slot": "Z", "corral_next": "B", "corral_tries": "2"},
]


@pytest.fixture
def installed(tmp_path: Path) -> Iterator[Path]:
    """A disk image installed by the installer; slots A and B are kernel-less squashfs."""
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(400 * MIB)
    source = squashfs(tmp_path, "1")
    loop = Path(sh("losetup", "--find", "--show", str(image)).strip())
    try:
        installer.install(loop, source, partitions=installer.loop_partitions, work=tmp_path)
    finally:
        cleanup_after(loop, tmp_path)
        subprocess.run(["losetup", "-d", str(loop)], check=False)
    with state_partition(image, tmp_path) as state:
        shutil.copyfile(state / "slots" / "A", state / "slots" / "B")
    yield image


@contextlib.contextmanager
def state_partition(image: Path, tmp_path: Path) -> Iterator[Path]:
    part = next(p for p in installer.partition_table(image) if p.name == layout.PART_STATE)
    mount = tmp_path / "state"
    mount.mkdir(exist_ok=True)
    with installer.loop_partitions(image, [part]) as devices:
        sh("mount", str(devices[layout.PART_STATE]), str(mount))
        try:
            yield mount
        finally:
            sh("umount", str(mount))


def set_env(image: Path, tmp_path: Path, env: dict[str, str]) -> None:
    with state_partition(image, tmp_path) as state:
        (state / "grubenv").write_bytes(grubenv.render(env))


def read_env(image: Path, tmp_path: Path) -> dict[str, str]:
    with state_partition(image, tmp_path) as state:
        out = sh("grub-editenv", str(state / "grubenv"), "list")
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def grub_choice(image: Path, tmp_path: Path, firmware: str) -> str:
    """Power on; the slot GRUB boots. QEMU is killed once GRUB has said it."""
    log = tmp_path / "serial.log"
    log.write_bytes(b"")
    argv = ["qemu-system-x86_64", "-accel", "tcg", "-m", "256", "-nographic", "-monitor", "none"]
    argv += ["-serial", f"file:{log}", "-no-reboot", "-nic", "none"]
    argv += ["-drive", f"file={image},format=raw,if=virtio"]
    if firmware == "uefi":
        vars_copy = tmp_path / "OVMF_VARS.fd"
        shutil.copyfile(OVMF_VARS, vars_copy)
        argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"]
        argv += ["-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:

        def booting() -> str | None:
            found = BOOTING.search(log.read_bytes().decode(errors="replace"))
            return found.group(1) if found else None

        try:
            return wait_until("GRUB to pick a slot", booting, 240, 0.5)
        except BaseException as e:
            e.add_note(f"serial console:\n{log.read_text(errors='replace')[-2000:]}")
            raise
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_grub_cfg_counter_matches_choose_slot(installed: Path, tmp_path: Path) -> None:
    for env in CASES:
        set_env(installed, tmp_path, env)
        want = boot.choose_slot(env)
        got = grub_choice(installed, tmp_path, "bios")
        assert got == want.slot, env
        assert read_env(installed, tmp_path) == {**env, **want.save}, env


def test_uefi_grub_takes_a_try(installed: Path, tmp_path: Path) -> None:
    env = {"corral_slot": "A", "corral_next": "B", "corral_tries": "2"}
    set_env(installed, tmp_path, env)
    assert grub_choice(installed, tmp_path, "uefi") == "B"
    assert read_env(installed, tmp_path)["corral_tries"] == "1"
