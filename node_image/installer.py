"""Install the running live system to a disk (``install_disk`` in the seed).

The disk gets the layout of :mod:`node_image.image.layout` (GPT)::

    bios-boot          1 MiB    GRUB's core image (BIOS boots)
    EFI                vfat     EFI/BOOT/BOOTX64.EFI, /boot/grub (modules and grub.cfg)
    corral-state       ext4     grubenv (corral_slot=A) and slots/A, slots/B
    corral-persistent  ext4     corral-agent/ (the agent's state), rancher/ (label
                                corral-persist: ext4 labels are at most 16 bytes)

Slot A is a byte copy of the live root squashfs (``/run/live/medium/live/filesystem.squashfs``),
verified by sha256. ``grub.cfg`` (:data:`GRUB_CFG`, from ``build/overlay``) is written to
``corral-state``/grub/grub.cfg; it finds that partition by label and boots a slot as
:func:`node_image.boot.choose_slot` decides; the initramfs script ``boot=corral`` then mounts it.

Every run starts from a wiped partition table and writes only to the target disk, so a run
killed halfway leaves the live system as it was and the next run does the whole job again. The
caller marks the install done (a run-once marker) only after :func:`install` has returned.

On a real kernel the partitions show up as block devices after ``partx -u`` (``/dev/vda2``,
``/dev/nvme0n1p2``); where the kernel reads no partition tables (the test host), the
:data:`PartitionMapper` seam attaches them with ``losetup --offset/--sizelimit`` instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from node_image import commands
from node_image.agent import crashpoints
from node_image.errors import AgentError
from node_image.image import layout

log = logging.getLogger(__name__)

MIB = 1 << 20
BIOS_BOOT_TYPE = "21686148-6449-6E6F-744E-656564454649"
EFI_MIB = 64
#: Room on the state partition beyond two slots (grubenv, ext4's own metadata).
STATE_MARGIN_MIB = 64
PERSISTENT_MIN_MIB = 256
#: Where the image keeps the installed disk's GRUB menu (from build/overlay).
GRUB_CFG = Path("/usr/share/corral/grub/installed.cfg")
#: The same file in this repository (tests, and running from a checkout).
REPO_GRUB_CFG = Path(__file__).resolve().parents[1] / "build" / "overlay" / str(GRUB_CFG)[1:]
#: On the persistent partition: the agent's state directory, and K3s's two directories.
PERSISTENT_AGENT = "corral-agent"
PERSISTENT_DIRS = (PERSISTENT_AGENT, "rancher/lib", "rancher/etc")
GRUB_MODULES = "part_gpt part_msdos ext2 search search_label"
#: Built into the UEFI image: everything ``installed.cfg`` uses (no module directory).
EFI_MODULES = (
    "part_gpt", "part_msdos", "fat", "ext2", "squash4", "loopback", "search", "search_label",
    "search_fs_uuid", "loadenv", "normal", "configfile", "linux", "test", "echo", "serial",
    "terminal", "sleep", "gzio", "xzio", "zstd", "all_video", "efi_gop", "efi_uga", "boot",
)  # fmt: skip
COPY_CHUNK = 4 * MIB


#: Where a test may cut the power (``CORRAL_AGENT_CRASH_AT``), in the order they are reached.
CRASH_POINTS = ("install:partitioned", "install:filesystems", "install:slot", "install:grub",
                "install:state")  # fmt: skip


class InstallError(AgentError):
    """The disk could not be installed; the message says which step and why."""


@dataclass(frozen=True)
class Partition:
    name: str
    number: int
    start: int  # bytes
    size: int  # bytes


#: Given the disk and its partitions (from ``sfdisk --json``), a context in which each
#: partition is a block device: ``{name: device}``.
PartitionMapper = Callable[[Path, Sequence[Partition]], AbstractContextManager[dict[str, Path]]]


@dataclass(frozen=True)
class Installed:
    disk: Path
    slot_sha256: str
    slot_size: int
    partitions: tuple[Partition, ...]


def run(argv: Sequence[str], timeout: float = 300, stdin: bytes = b"") -> str:
    return commands.run(argv, timeout=timeout, stdin=stdin).stdout.decode()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(COPY_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def is_live(medium: Path = layout.LIVE_MEDIUM) -> bool:
    """True on a live boot (live-boot mounted the boot medium), False on an installed one."""
    return (medium / layout.LIVE_ROOT.lstrip("/")).is_file()


# --- partitions ------------------------------------------------------------------------


def sfdisk_script(state_mib: int) -> str:
    return (
        "label: gpt\n"
        f"size=1MiB, type={BIOS_BOOT_TYPE}, name={layout.PART_BIOS}\n"
        f"size={EFI_MIB}MiB, type=U, name={layout.PART_EFI}\n"
        f"size={state_mib}MiB, type=L, name={layout.PART_STATE}\n"
        f"type=L, name={layout.PART_PERSISTENT}\n"
    )


def state_mib_for(root_size: int) -> int:
    """Two slots of the root squashfs, plus margin, in MiB (rounded up)."""
    return -(-2 * root_size // MIB) + STATE_MARGIN_MIB


def disk_size(disk: Path) -> int:
    with open(disk, "rb") as f:
        return f.seek(0, os.SEEK_END)


def partition_table(disk: Path) -> tuple[Partition, ...]:
    table = json.loads(run(["sfdisk", "--json", str(disk)]))["partitiontable"]
    sector = int(table.get("sectorsize", 512))
    found = []
    for i, entry in enumerate(table.get("partitions", []), start=1):
        found.append(
            Partition(
                str(entry.get("name", "")), i, entry["start"] * sector, entry["size"] * sector
            )
        )
    return tuple(found)


def partition_device(disk: Path, number: int) -> Path:
    """The kernel's name for partition ``number`` of ``disk`` (``vda2``, ``nvme0n1p2``)."""
    name = disk.name
    sep = "p" if name[-1:].isdigit() else ""
    return disk.with_name(f"{name}{sep}{number}")


@contextlib.contextmanager
def kernel_partitions(disk: Path, parts: Sequence[Partition]) -> Iterator[dict[str, Path]]:
    """The kernel's own partition devices: re-read the table, wait for udev and the nodes."""
    with contextlib.suppress(commands.CommandError):
        run(["partx", "-u", str(disk)])
    with contextlib.suppress(commands.CommandError):
        run(["udevadm", "settle", "--timeout=30"], timeout=60)
    devices = {p.name: partition_device(disk, p.number) for p in parts}
    deadline = time.monotonic() + 30
    while not all(_is_block(d) for d in devices.values()):
        if time.monotonic() > deadline:
            missing = ", ".join(str(d) for d in devices.values() if not _is_block(d))
            raise InstallError(f"{disk}: partition devices did not appear: {missing}")
        time.sleep(0.5)
    yield devices


@contextlib.contextmanager
def loop_partitions(disk: Path, parts: Sequence[Partition]) -> Iterator[dict[str, Path]]:
    """Each partition as a loop device over ``disk`` (for kernels that read no tables)."""
    with contextlib.ExitStack() as undo:
        devices = {}
        for p in parts:
            argv = ["losetup", "--find", "--show", "--offset", str(p.start)]
            loop = run([*argv, "--sizelimit", str(p.size), str(disk)]).strip()
            undo.callback(_detach, loop)
            devices[p.name] = Path(loop)
        yield devices


def _detach(loop: str) -> None:
    with contextlib.suppress(commands.CommandError):
        run(["losetup", "-d", loop])


def _is_block(path: Path) -> bool:
    try:
        return stat.S_ISBLK(path.stat().st_mode)
    except OSError:
        return False


# --- the install -----------------------------------------------------------------------


def check_disk(disk: Path, root_size: int) -> int:
    if not _is_block(disk):
        raise InstallError(f"install disk {disk} is not a block device")
    mounts = Path("/proc/self/mounts").read_text().split("\n")
    for line in mounts:
        source = line.split(" ", 1)[0]
        if source == str(disk) or (
            source.startswith(str(disk)) and source[len(str(disk)) :].lstrip("p").isdigit()
        ):
            raise InstallError(f"install disk {disk} is in use ({source} is mounted)")
    size = disk_size(disk)
    need = (1 + EFI_MIB + state_mib_for(root_size) + PERSISTENT_MIN_MIB + 2) * MIB
    if size < need:
        raise InstallError(f"install disk {disk} holds {size // MIB} MiB; it needs {need // MIB}")
    return size


def install(
    disk: Path,
    source: Path,
    *,
    state_dir: Path | None = None,
    partitions: PartitionMapper = kernel_partitions,
    grub_cfg: Path | None = None,
    work: Path | None = None,
    expected_sha256: str | None = None,
) -> Installed:
    """Partition ``disk``, make its filesystems, copy ``source`` into slot A, install GRUB
    (BIOS and UEFI) and copy ``state_dir`` onto the persistent partition."""
    root_size = source.stat().st_size
    check_disk(disk, root_size)
    cfg = grub_cfg or (GRUB_CFG if GRUB_CFG.is_file() else REPO_GRUB_CFG)
    log.warning("installing to %s: partitioning", disk)
    run(["wipefs", "--all", "--quiet", str(disk)])
    script = sfdisk_script(state_mib_for(root_size))
    run(["sfdisk", "--quiet", "--wipe", "always", str(disk)], stdin=script.encode())
    parts = partition_table(disk)
    crashpoints.reached("install:partitioned")
    names = [p.name for p in parts]
    expected = [layout.PART_BIOS, layout.PART_EFI, layout.PART_STATE, layout.PART_PERSISTENT]
    if names != expected:
        raise InstallError(f"{disk}: partitions came out as {names}, not {expected}")
    with contextlib.ExitStack() as undo:
        devices = undo.enter_context(partitions(disk, parts))
        log.warning("installing to %s: filesystems", disk)
        run(["mkfs.vfat", "-n", layout.FS_LABELS[layout.PART_EFI], str(devices[layout.PART_EFI])])
        for name in (layout.PART_STATE, layout.PART_PERSISTENT):
            label = layout.FS_LABELS[name]
            run(["mkfs.ext4", "-F", "-q", "-L", label, str(devices[name])], timeout=600)
        crashpoints.reached("install:filesystems")
        top = Path(
            undo.enter_context(tempfile.TemporaryDirectory(prefix="corral-install-", dir=work))
        )
        mounts = {}
        for name in (layout.PART_STATE, layout.PART_PERSISTENT):
            mount = top / name
            mount.mkdir()
            run(["mount", str(devices[name]), str(mount)])
            undo.callback(_umount, mount)
            mounts[name] = mount
        sha, size = copy_slot(source, mounts[layout.PART_STATE] / "slots" / "A")
        if expected_sha256 is not None and sha != expected_sha256:
            raise InstallError(f"{source} has sha256 {sha}, its manifest says {expected_sha256}")
        crashpoints.reached("install:slot")
        make_grubenv(mounts[layout.PART_STATE] / "grubenv")
        install_grub(disk, devices[layout.PART_EFI], mounts[layout.PART_STATE], cfg, top)
        crashpoints.reached("install:grub")
        persistent = mounts[layout.PART_PERSISTENT]
        for sub in PERSISTENT_DIRS:
            (persistent / sub).mkdir(parents=True, exist_ok=True)
        if state_dir is not None:
            copy_state(state_dir, persistent / PERSISTENT_AGENT)
        crashpoints.reached("install:state")
        os.sync()
    log.warning("installed to %s (slot A sha256 %s)", disk, sha)
    return Installed(disk, sha, size, parts)


def _umount(mount: Path) -> None:
    try:
        run(["umount", str(mount)])
    except commands.CommandError:
        run(["umount", "-l", str(mount)])


def copy_slot(source: Path, dest: Path) -> tuple[str, int]:
    """Copy the root image into a slot file, fsync, reread and compare sha256s."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    tmp = dest.with_name(dest.name + ".tmp")
    with open(source, "rb") as src, open(tmp, "wb") as out:
        while chunk := src.read(COPY_CHUNK):
            out.write(chunk)
            digest.update(chunk)
            size += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    want = digest.hexdigest()
    got = sha256_file(tmp)
    if got != want:
        raise InstallError(f"slot copy of {source} reads back as sha256 {got}, not {want}")
    os.replace(tmp, dest)
    return want, size


def make_grubenv(path: Path) -> None:
    run(["grub-editenv", str(path), "create"])
    run(["grub-editenv", str(path), "set", "corral_slot=A"])


def install_grub(disk: Path, efi_device: Path, state: Path, cfg: Path, work: Path) -> None:
    """GRUB for BIOS (``grub-install``: boot.img in the MBR, core.img in ``bios-boot``,
    modules in ``corral-state``/grub) and for UEFI (a standalone image with every module
    built in, written as EFI/BOOT/BOOTX64.EFI with mtools, so the EFI partition is never
    mounted). Both find ``corral-state`` and read its ``grub/grub.cfg``."""
    log.warning("installing GRUB to %s (BIOS and UEFI)", disk)
    run(["grub-install", "--target=i386-pc", f"--boot-directory={state}",
         f"--modules={GRUB_MODULES}", str(disk)])  # fmt: skip
    early = work / "grub-early.cfg"
    early.write_text(
        f"search --no-floppy --label {layout.PART_STATE} --set=root\nset prefix=($root)/grub\n"
    )
    efi_image = work / "BOOTX64.EFI"
    run(["grub-mkimage", "--format=x86_64-efi", f"--output={efi_image}",
         f"--config={early}", "--prefix=/grub", *EFI_MODULES])  # fmt: skip
    image = f"{efi_device}@@0"
    run(["mmd", "-i", image, "::/EFI", "::/EFI/BOOT"])
    run(["mcopy", "-i", image, str(efi_image), "::/EFI/BOOT/BOOTX64.EFI"])
    shutil.copyfile(cfg, state / "grub" / "grub.cfg")


def copy_state(source: Path, dest: Path) -> None:
    """The agent's state directory, every file fsynced (identity, keys, the outbox)."""
    shutil.copytree(source, dest, symlinks=True, dirs_exist_ok=True)
    os.chmod(dest, 0o700)
    for dirpath, _dirs, files in os.walk(dest):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
