"""Collect the hardware facts a device reports when it registers.

Everything here is best effort: a fact that cannot be read (missing file, permission denied,
odd hardware, no udev) is left out and logged at debug level; :func:`collect` never raises.
DMI, ``/proc/cpuinfo`` and ``/proc/meminfo`` are read from ``sys_root`` and ``proc_root`` so
tests can point them at a fake tree; block devices and NICs come from a pyudev context.
"""

from __future__ import annotations

import logging
import os
import platform
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pyudev

from registration.protocol import Cpu, Disk, Facts, Memory, Nic

log = logging.getLogger(__name__)

#: The files of ``/sys/class/dmi/id`` that are reported, in this order.
DMI_FIELDS: tuple[str, ...] = (
    "product_uuid",
    "product_name",
    "product_serial",
    "product_version",
    "product_family",
    "product_sku",
    "sys_vendor",
    "board_serial",
    "board_vendor",
    "board_name",
    "board_version",
    "board_asset_tag",
    "chassis_type",
    "chassis_vendor",
    "chassis_serial",
    "chassis_asset_tag",
    "bios_vendor",
    "bios_version",
    "bios_date",
    "bios_release",
)

#: Block devices whose names start with one of these are virtual and not reported.
VIRTUAL_DISK_PREFIXES: tuple[str, ...] = ("loop", "ram", "zram", "nbd")

#: ``/proc/cpuinfo`` keys naming the CPU, best first: x86 and most ARM32 kernels give
#: ``model name``; older ARM kernels ``Hardware`` or ``Processor``, Raspberry Pi ``Model``,
#: MIPS ``cpu model``, PowerPC ``cpu``, RISC-V ``uarch``.
CPU_MODEL_KEYS: tuple[str, ...] = (
    "model name",
    "Hardware",
    "cpu model",
    "Processor",
    "Model",
    "cpu",
    "uarch",
)

SECTOR_BYTES = 512
MAX_STR = 256  # protocol.Str256
MAX_ITEMS = 256  # protocol.Facts disks / nics
MAX_CPUS = 65536  # protocol.Cpu.count

_T = TypeVar("_T")


def _clip(value: str) -> str:
    return value[:MAX_STR]


def _text(value: object) -> str | None:
    """A stripped, clipped string from str/bytes, or None if empty or absent."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    text = str(value).strip()
    return _clip(text) if text else None


def _read_text(path: Path) -> str | None:
    try:
        return _text(path.read_bytes())
    except OSError as e:
        log.debug("cannot read %s: %s", path, e)
        return None


def _safe(what: str, fn: Callable[[], _T], default: _T) -> _T:
    """Run one fact collector; on any error log it and return ``default``."""
    try:
        return fn()
    except Exception as e:  # odd hardware must never break registration
        log.warning("cannot collect %s: %s", what, e, exc_info=log.isEnabledFor(logging.DEBUG))
        return default


# --- DMI ------------------------------------------------------------------------------


def read_dmi(sys_root: Path = Path("/sys")) -> dict[str, str]:
    """The non-empty, readable DMI fields under ``<sys_root>/class/dmi/id``."""
    base = sys_root / "class" / "dmi" / "id"
    if not base.is_dir():
        log.debug("no DMI at %s", base)
        return {}
    dmi: dict[str, str] = {}
    for field in DMI_FIELDS:
        value = _read_text(base / field)
        if value is not None:
            dmi[field] = value
    return dmi


# --- CPU and memory -------------------------------------------------------------------


def _cpuinfo_pairs(text: str) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            pairs.append((key.strip(), value.strip()))
    return pairs


def cpu_from_cpuinfo(text: str, cpu_count: int | None) -> Cpu:
    """The CPU model and count from ``/proc/cpuinfo`` text.

    ``cpu_count`` (normally :func:`os.cpu_count`) wins over counting ``processor`` entries.
    """
    pairs = _cpuinfo_pairs(text)
    model: str | None = None
    for wanted in CPU_MODEL_KEYS:
        model = next((_text(v) for k, v in pairs if k == wanted and v), None)
        if model is not None:
            break
    count = cpu_count or sum(1 for k, _ in pairs if k == "processor")
    return Cpu(model=model, count=max(0, min(count, MAX_CPUS)))


def read_cpu(proc_root: Path = Path("/proc")) -> Cpu:
    text = ""
    try:
        text = (proc_root / "cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        log.debug("cannot read cpuinfo: %s", e)
    return cpu_from_cpuinfo(text, os.cpu_count())


def memory_from_meminfo(text: str) -> Memory:
    """``MemTotal`` from ``/proc/meminfo`` text, in bytes (0 if absent)."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "MemTotal":
            parts = value.split()
            if parts and parts[0].isdigit():
                unit = parts[1].lower() if len(parts) > 1 else ""
                factor = 1024 if unit == "kb" else 1
                return Memory(total_bytes=int(parts[0]) * factor)
    return Memory(total_bytes=0)


def read_memory(proc_root: Path = Path("/proc")) -> Memory:
    try:
        text = (proc_root / "meminfo").read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        log.debug("cannot read meminfo: %s", e)
        return Memory(total_bytes=0)
    return memory_from_meminfo(text)


# --- Block devices and NICs (pyudev) --------------------------------------------------


def is_virtual_disk(name: str) -> bool:
    return name.startswith(VIRTUAL_DISK_PREFIXES)


def disk_from_properties(
    name: str, properties: Mapping[str, str], size_sectors: int, removable: bool
) -> Disk | None:
    """Map one udev block device (its properties and sysfs size/removable) to a :class:`Disk`.

    Returns None for virtual devices (loop, ram, zram, nbd) and nonsensical sizes.
    """
    if not name or is_virtual_disk(name):
        return None
    if size_sectors < 0:
        log.debug("disk %s has a negative size %s; skipped", name, size_sectors)
        return None
    return Disk(
        name=_clip(name),
        size_bytes=size_sectors * SECTOR_BYTES,
        model=_text(properties.get("ID_MODEL")),
        serial=disk_serial(properties),
        removable=removable,
        bus=disk_bus(properties),
    )


def disk_bus(properties: Mapping[str, str]) -> str | None:
    """``ID_BUS``, or the bus the device path shows when udev has no database (containers)."""
    bus = _text(properties.get("ID_BUS"))
    if bus is None:
        devpath = properties.get("DEVPATH", "")
        if properties.get("ID_USB_DRIVER") or "/usb" in devpath:
            bus = "usb"
        elif "/virtio" in devpath:
            bus = "virtio"
    return bus


def disk_serial(properties: Mapping[str, str]) -> str | None:
    return _text(properties.get("ID_SERIAL_SHORT")) or _text(properties.get("ID_SERIAL"))


def _attribute(device: Any, name: str) -> str | None:
    try:
        return _text(device.attributes.get(name))
    except Exception as e:  # sysfs attributes fail in many ways
        log.debug("cannot read attribute %s of %s: %s", name, device, e)
        return None


def _disk(device: Any) -> Disk | None:
    name = str(device.sys_name)
    if is_virtual_disk(name):
        return None
    size = _attribute(device, "size")
    if size is None or not size.isdigit():
        log.debug("disk %s has no readable size (%r); skipped", name, size)
        return None
    properties = {str(k): str(v) for k, v in dict(device.properties).items()}
    return disk_from_properties(name, properties, int(size), _attribute(device, "removable") == "1")


def read_disks(context: Any) -> list[Disk]:
    """Whole disks (not partitions), virtual ones left out, sorted by name."""
    disks: list[Disk] = []
    for device in context.list_devices(subsystem="block", DEVTYPE="disk"):
        try:
            disk = _disk(device)
        except Exception as e:  # one odd device must not hide the others
            log.warning("cannot read disk %s: %s", getattr(device, "sys_name", device), e)
            continue
        if disk is not None:
            disks.append(disk)
    disks.sort(key=lambda d: d.name)
    return disks[:MAX_ITEMS]


def read_nics(context: Any) -> list[Nic]:
    """Network interfaces other than ``lo`` with their MAC, sorted by name."""
    nics: list[Nic] = []
    for device in context.list_devices(subsystem="net"):
        name = _text(device.sys_name)
        if name is None or name == "lo":
            continue
        nics.append(Nic(name=name, mac=_attribute(device, "address")))
    nics.sort(key=lambda n: n.name)
    return nics[:MAX_ITEMS]


# --- Everything -----------------------------------------------------------------------


def _udev_context() -> Any:
    return pyudev.Context()


def collect(
    sys_root: Path = Path("/sys"),
    proc_root: Path = Path("/proc"),
    context: pyudev.Context | None = None,
) -> Facts:
    """The facts of the host this runs on. Never raises; unreadable facts are left out.

    ``context`` is a :class:`pyudev.Context` (a real one is made when None).
    """
    if context is None:
        context = _safe("udev context", _udev_context, None)
    disks: list[Disk] = []
    nics: list[Nic] = []
    if context is not None:
        disks = _safe("disks", lambda: read_disks(context), [])
        nics = _safe("nics", lambda: read_nics(context), [])
    return Facts(
        hostname=_safe("hostname", lambda: _text(socket.gethostname()) or "", ""),
        dmi=_safe("dmi", lambda: read_dmi(sys_root), {}),
        cpu=_safe("cpu", lambda: read_cpu(proc_root), Cpu(count=0)),
        memory=_safe("memory", lambda: read_memory(proc_root), Memory(total_bytes=0)),
        disks=disks,
        nics=nics,
        kernel=_safe("kernel", lambda: _text(platform.release()) or "", ""),
        arch=_safe("arch", lambda: _text(platform.machine()) or "", ""),
    )
