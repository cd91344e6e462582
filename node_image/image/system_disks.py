"""Which whole disks this machine is using: the ones holding / and /boot, and every disk with a
mounted filesystem, active swap or a device-mapper/md holder on it.

Everything is resolved through sysfs: a device number ``major:minor`` is looked up under
``/sys/dev/block``; a partition leads to its disk (the parent directory), and a dm or md device
leads through ``slaves/`` to the disks below it. Mounts with an anonymous device number (btrfs
subvolumes, overlayfs) are resolved through their source device or, for overlayfs, through
the directories they are layered on. Reads ``/proc/self/mountinfo`` and ``/proc/swaps``.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: The mount points whose disks are the running system's.
SYSTEM_MOUNTS = ("/", "/boot", "/boot/efi", "/usr")
#: How deep dm/md slaves and overlay layers are followed (they do not nest deeper in practice).
MAX_DEPTH = 8


@dataclass(frozen=True)
class Mount:
    devnum: str  # "major:minor" as mountinfo shows it
    mount_point: str
    fs_type: str
    source: str
    super_options: str


@dataclass(frozen=True)
class SystemDisks:
    """Whole disk names (``sda``, ``vda``, ``loop3``) the running system uses, and how."""

    #: disk → the system mount point it holds (``/``, ``/boot``)
    system: dict[str, str]
    #: disk → what uses it (``mounted at /mnt``, ``swap``, ``held by dm-0``)
    busy: dict[str, str]


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (``\\040``)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount]:
    mounts = []
    for line in text.splitlines():
        head, sep, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if not sep or len(fields) < 5 or len(rest) < 2:
            continue
        options = rest[2] if len(rest) > 2 else ""
        mounts.append(Mount(fields[2], _unescape(fields[4]), rest[0], _unescape(rest[1]), options))
    return mounts


def parse_swaps(text: str) -> list[str]:
    """The swap files and devices in use (``/proc/swaps`` after its header)."""
    return [_unescape(line.split()[0]) for line in text.splitlines()[1:] if line.strip()]


def whole_disks(devnum: str, sys_root: Path = Path("/sys"), depth: int = 0) -> set[str]:
    """The whole disks under block device ``major:minor``: itself, the disk of a partition, or
    the disks below a dm/md device's slaves. Empty when sysfs does not know the number."""
    node = sys_root / "dev" / "block" / devnum
    if depth > MAX_DEPTH or not node.exists():
        return set()
    node = node.resolve()
    slaves = sorted((node / "slaves").iterdir()) if (node / "slaves").is_dir() else []
    if slaves:
        found: set[str] = set()
        for slave in slaves:
            dev = _read(slave.resolve() / "dev")
            if dev:
                found |= whole_disks(dev, sys_root, depth + 1)
        return found
    if (node / "partition").exists():
        return whole_disks(_read(node.parent / "dev") or "", sys_root, depth + 1) or {
            node.parent.name
        }
    return {node.name}


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _devnum(number: int) -> str:
    return f"{os.major(number)}:{os.minor(number)}"


def _path_disks(path: str, mounts: list[Mount], sys_root: Path, depth: int) -> set[str]:
    """The disks holding the file system that ``path`` is on."""
    try:
        st = os.stat(path)
    except OSError as e:
        log.debug("cannot stat %s: %s", path, e)
        return set()
    if stat.S_ISBLK(st.st_mode):
        return whole_disks(_devnum(st.st_rdev), sys_root, depth)
    devnum = _devnum(st.st_dev)
    if os.major(st.st_dev) != 0:
        return whole_disks(devnum, sys_root, depth)
    found: set[str] = set()
    for mount in mounts:
        if mount.devnum == devnum:
            found |= _mount_disks(mount, mounts, sys_root, depth + 1)
    return found


def _mount_disks(mount: Mount, mounts: list[Mount], sys_root: Path, depth: int = 0) -> set[str]:
    """The disks a mount lives on: by its device number, its source device, or for
    overlayfs the directories it is layered on."""
    if depth > MAX_DEPTH:
        return set()
    if not mount.devnum.startswith("0:"):
        return whole_disks(mount.devnum, sys_root, depth)
    if mount.source.startswith("/dev/"):
        return _path_disks(mount.source, mounts, sys_root, depth + 1)
    found: set[str] = set()
    if mount.fs_type == "overlay":
        for option in mount.super_options.split(","):
            key, _, value = option.partition("=")
            if key in ("upperdir", "lowerdir", "workdir"):
                for layer in value.split(":"):
                    found |= _path_disks(layer, mounts, sys_root, depth + 1)
    return found


def _holders(sys_root: Path) -> Iterator[tuple[str, str]]:
    """(disk, holder) for every disk or partition another block device is stacked on."""
    block = sys_root / "block"
    if not block.is_dir():
        return
    for disk in sorted(block.iterdir()):
        parts = [disk] + [p for p in disk.iterdir() if (p / "partition").exists()]
        for part in parts:
            holders = part / "holders"
            for holder in sorted(holders.iterdir()) if holders.is_dir() else []:
                yield disk.name, holder.name


def read_system_disks(
    proc_root: Path = Path("/proc"), sys_root: Path = Path("/sys")
) -> SystemDisks:
    """What this machine's running system uses, read from ``proc_root`` and ``sys_root``."""
    mounts = parse_mountinfo(_read(proc_root / "self" / "mountinfo") or "")
    system: dict[str, str] = {}
    for point in SYSTEM_MOUNTS:
        if point == "/" or any(m.mount_point == point for m in mounts):
            for disk in _path_disks(point, mounts, sys_root, 0):
                system.setdefault(disk, point)
    busy: dict[str, str] = {}
    for mount in mounts:
        for disk in _mount_disks(mount, mounts, sys_root):
            busy.setdefault(disk, f"mounted at {mount.mount_point}")
    for swap in parse_swaps(_read(proc_root / "swaps") or ""):
        for disk in _path_disks(swap, mounts, sys_root, 0):
            busy.setdefault(disk, f"in use as swap ({swap})")
    for disk, holder in _holders(sys_root):
        busy.setdefault(disk, f"held by {holder}")
    return SystemDisks(system=system, busy=busy)
