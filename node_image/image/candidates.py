"""Which block devices an image may be flashed to.

:func:`refusals` is the filter: a pure function of one device's udev properties and sysfs facts
(:class:`BlockDevice`), the disks the running system uses (:class:`SystemDisks`) and the image
size. A device is a candidate when it has no refusal: a whole disk, removable or on the USB
bus, not holding / or /boot, not mounted, swapped on or held by dm/md, writable, and at least
as large as the image. A loop device passes only when the operator named it (``explicit``), so
tests can flash a real block device. :func:`list_devices` and :func:`device_at` feed it from
pyudev.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from node_image.errors import AgentError
from node_image.image.system_disks import SystemDisks
from registration.facts import SECTOR_BYTES, disk_bus, disk_serial

#: Bus names that make a disk a candidate even when the kernel does not call it removable.
CANDIDATE_BUSES = ("usb",)


#: The sysfs line of a recorded property set: lower-case ``key=value`` pairs.
_FACTS = re.compile(r"(?:[a-z_]+=\S*\s*)+")


@dataclass(frozen=True)
class BlockDevice:
    """One block device as udev and sysfs describe it."""

    properties: Mapping[str, str]
    size_bytes: int
    removable: bool
    read_only: bool = False
    #: A loop device's backing file (``loop/backing_file`` in sysfs), shown as its model.
    backing_file: str | None = None

    @property
    def node(self) -> str:
        return self.properties.get("DEVNAME", "")

    @property
    def name(self) -> str:
        return os.path.basename(self.properties.get("DEVPATH", "")) or os.path.basename(self.node)

    @property
    def model(self) -> str | None:
        vendor = self.properties.get("ID_VENDOR", "").replace("_", " ").strip()
        model = self.properties.get("ID_MODEL", "").replace("_", " ").strip()
        text = f"{vendor} {model}".strip() if vendor and not model.startswith(vendor) else model
        if not text and self.backing_file:
            text = f"loop on {self.backing_file}"
        return text or None

    @property
    def serial(self) -> str | None:
        return disk_serial(self.properties)

    @property
    def bus(self) -> str | None:
        if self.is_loop:
            return "loop"
        return disk_bus(self.properties)

    @property
    def is_loop(self) -> bool:
        return self.properties.get("MAJOR") == "7" or self.name.startswith("loop")


def refusals(
    device: BlockDevice, system: SystemDisks, image_size: int | None, *, explicit: bool = False
) -> list[str]:
    """Why ``image_size`` bytes may not be written to ``device``; empty for a candidate.

    ``image_size`` None leaves the size out (listing devices without an image).
    """
    why: list[str] = []
    if device.properties.get("DEVTYPE") != "disk":
        why.append("is a partition, not a whole disk")
    if device.name in system.system:
        why.append(f"holds the running system ({system.system[device.name]})")
    if device.name in system.busy:
        why.append(f"is {system.busy[device.name]}")
    if device.read_only:
        why.append("is read-only")
    if device.size_bytes == 0:
        why.append("has no medium (size 0)")
    elif image_size is not None and device.size_bytes < image_size:
        why.append(f"is smaller than the image ({device.size_bytes} < {image_size} bytes)")
    if device.is_loop:
        if not explicit:
            why.append("is a loop device (accepted only when named with --device)")
    elif not (device.removable or device.bus in CANDIDATE_BUSES):
        why.append(f"is neither removable nor on the USB bus (bus: {device.bus or 'unknown'})")
    return why


def parse_properties(text: str) -> BlockDevice:
    """A recorded property set: ``udevadm info --query=property`` lines, then a line of sysfs
    facts (``removable=1 size=131072``, size in 512-byte sectors)."""
    properties: dict[str, str] = {}
    facts: dict[str, str] = {}
    for line in text.splitlines():
        if _FACTS.fullmatch(line):
            facts.update(dict(pair.split("=", 1) for pair in line.split()))
        elif "=" in line:
            key, _, value = line.partition("=")
            properties[key] = value
    return BlockDevice(
        properties=properties,
        size_bytes=int(facts.get("size", "0")) * SECTOR_BYTES,
        removable=facts.get("removable") == "1",
        read_only=facts.get("ro") == "1",
    )


def _attribute(device: Any, name: str) -> str:
    try:
        return str(device.attributes.asstring(name)).strip()
    except (KeyError, OSError, UnicodeDecodeError):
        return ""


def from_udev(device: Any) -> BlockDevice:
    """A :class:`BlockDevice` from a ``pyudev.Device`` of the block subsystem."""
    size = _attribute(device, "size")
    return BlockDevice(
        properties={str(k): str(v) for k, v in dict(device.properties).items()},
        size_bytes=int(size) * SECTOR_BYTES if size.isdigit() else 0,
        removable=_attribute(device, "removable") == "1",
        read_only=_attribute(device, "ro") == "1",
        backing_file=_attribute(device, "loop/backing_file") or None,
    )


def _context() -> Any:
    import pyudev

    return pyudev.Context()


def list_devices(context: Any = None) -> list[BlockDevice]:
    """Every whole disk udev knows, by name; detached loop devices (size 0) left out."""
    context = context or _context()
    found = [from_udev(d) for d in context.list_devices(subsystem="block", DEVTYPE="disk")]
    return sorted((d for d in found if not (d.is_loop and d.size_bytes == 0)), key=lambda d: d.name)


def device_at(path: str, context: Any = None) -> BlockDevice:
    """The block device at ``path`` (``/dev/sdb``, ``/dev/disk/by-id/…``); refuses anything
    that is not a block device."""
    try:
        st = os.stat(path)
    except FileNotFoundError as e:
        raise AgentError(f"{path}: no such device") from e
    if not stat.S_ISBLK(st.st_mode):
        raise AgentError(f"{path} is not a block device")
    import pyudev

    try:
        device = pyudev.Devices.from_device_number(context or _context(), "block", st.st_rdev)
    except pyudev.DeviceNotFoundError as e:
        raise AgentError(f"{path}: udev does not know this block device") from e
    return from_udev(device)
