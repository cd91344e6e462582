"""A real device's disk for ``LinuxHost`` tests: a GPT disk image made with ``sfdisk``, its
partitions attached with ``losetup --offset/--sizelimit`` (this kernel reads no partition
tables), and the machine's boot simulated as GRUB would make it.

Partitions: ``EFI`` (FAT, ``mformat``), ``corral-state`` (ext4: ``grubenv`` and the slot
images ``slots/A`` and ``slots/B``, where ``LinuxHost``'s :class:`~node_image.boot.BootLayout`
points) and ``corral-persistent`` (ext4: the agent's state directory). Every loop device and
mount made here is removed on the way out, whatever happened.

:class:`Machine` is what firmware and ``grub.cfg`` do at power-on: the GRUB decision
(:func:`node_image.boot.choose_slot`, the decremented counter saved with ``grub-editenv``),
a kernel command line naming the slot (``corral.slot=B``) and a new boot id. ``LinuxHost``
reads those two files instead of ``/proc`` (``node_image.host.Kernel``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from node_image import boot, grubenv
from node_image.boot import BootLayout
from node_image.host import Kernel

MIB = 1 << 20
SFDISK_SCRIPT = """label: gpt
size=8MiB, type=U, name=EFI
size=48MiB, type=L, name=corral-state
type=L, name=corral-persistent
"""


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


@dataclass(frozen=True)
class Partition:
    name: str
    device: Path
    offset: int
    size: int


@dataclass(frozen=True)
class Disk:
    image: Path
    partitions: dict[str, Partition]
    state_mount: Path
    persistent_mount: Path

    @property
    def layout(self) -> BootLayout:
        return BootLayout.under(self.state_mount)


@contextlib.contextmanager
def gpt_disk(directory: Path, size_mib: int = 128) -> Iterator[Disk]:
    """Make, partition, attach, format and mount the disk; undo all of it on exit."""
    image = directory / "disk.img"
    with open(image, "wb") as f:
        f.truncate(size_mib * MIB)
    subprocess.run(["sfdisk", "--quiet", str(image)], input=SFDISK_SCRIPT, text=True, check=True)
    table = json.loads(sh("sfdisk", "--json", str(image)))["partitiontable"]
    sector = int(table.get("sectorsize", 512))
    with contextlib.ExitStack() as undo:
        parts: dict[str, Partition] = {}
        for entry in table["partitions"]:
            offset, size = entry["start"] * sector, entry["size"] * sector
            loop = sh(
                "losetup", "--find", "--show", "--offset", str(offset), "--sizelimit",
                str(size), str(image),
            ).strip()  # fmt: skip
            undo.callback(subprocess.run, ["losetup", "-d", loop], check=False)
            parts[entry["name"]] = Partition(entry["name"], Path(loop), offset, size)
        efi = parts["EFI"]  # a loop device has no geometry: give mformat one
        sh("mformat", "-i", str(efi.device), "-T", str(efi.size // 512), "-h", "2", "-s", "32",
           "-v", "EFI", "::")  # fmt: skip
        mounts = {}
        for name in ("corral-state", "corral-persistent"):
            sh("mkfs.ext4", "-q", "-L", name, str(parts[name].device))
            mount = directory / name
            mount.mkdir()
            sh("mount", str(parts[name].device), str(mount))
            undo.callback(subprocess.run, ["umount", "-l", str(mount)], check=False)
            mounts[name] = mount
        disk = Disk(image, parts, mounts["corral-state"], mounts["corral-persistent"])
        (disk.state_mount / "slots").mkdir()
        yield disk


def squashfs(directory: Path, version: str, health_check: str | None = None) -> Path:
    """A tiny real root filesystem image: ``/etc/corral/os-version`` and, when given, the
    ``/etc/corral/health-check`` program the agent runs after booting it."""
    root = directory / f"root-{version}"
    etc = root / "etc" / "corral"
    etc.mkdir(parents=True)
    (etc / "os-version").write_text(version + "\n")
    # Some bulk, so the slot write takes several chunks (the write-half crash point).
    (root / "usr").mkdir()
    (root / "usr" / "payload").write_bytes(hashlib.sha512(version.encode()).digest() * 8192)
    if health_check is not None:
        (etc / "health-check").write_text(health_check)
        (etc / "health-check").chmod(0o755)
    out = directory / f"os-{version}.squashfs"
    sh("mksquashfs", str(root), str(out), "-quiet", "-noappend", "-all-root", "-noI", "-noD")
    return out


def sha256(path: Path, size: int | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read() if size is None else f.read(size))
    return digest.hexdigest()


@dataclass(frozen=True)
class Machine:
    """Power-on of a machine whose slots and grubenv are on ``layout``."""

    layout: BootLayout
    kernel_dir: Path

    @property
    def kernel(self) -> Kernel:
        return Kernel(self.kernel_dir / "cmdline", self.kernel_dir / "boot_id", ("true",))

    def env(self) -> dict[str, str]:
        if not self.layout.grubenv.exists():
            return {}
        return grubenv.parse(self.layout.grubenv.read_bytes())

    def power_on(self) -> str:
        """Boot: GRUB's choice, its saved counter, the kernel's files. The slot booted."""
        self.kernel_dir.mkdir(parents=True, exist_ok=True)
        choice = boot.choose_slot(self.env())
        if choice.save:
            pairs = [f"{k}={v}" for k, v in choice.save.items()]
            sh("grub-editenv", str(self.layout.grubenv), "set", *pairs)
        (self.kernel_dir / "cmdline").write_text(
            f"root=/dev/corral {boot.CMDLINE_KEY}={choice.slot}\n"
        )
        (self.kernel_dir / "boot_id").write_text(str(uuid.uuid4()) + "\n")
        return choice.slot

    def booted(self) -> str:
        found = boot.slot_from_cmdline((self.kernel_dir / "cmdline").read_text())
        assert found is not None
        return found
