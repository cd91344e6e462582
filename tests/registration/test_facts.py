"""Hardware facts: recorded udev fixtures, a fake sysfs/procfs tree, and this real machine."""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import pyudev

from registration.facts import (
    DMI_FIELDS,
    collect,
    disk_from_properties,
    read_dmi,
)
from registration.protocol import Disk, Facts

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "udev"
VIRTUAL_PREFIXES = ("loop", "ram", "zram", "nbd")
MiB = 1024 * 1024


def load_fixture(name: str) -> tuple[dict[str, str], int, bool]:
    """A recorded ``.properties`` file: KEY=VALUE lines, then ``removable=N size=N``."""
    lines = (FIXTURES / f"{name}.properties").read_text(encoding="utf-8").splitlines()
    lines = [line for line in lines if line.strip()]
    properties = dict(line.split("=", 1) for line in lines[:-1])
    sysfs = dict(pair.split("=", 1) for pair in lines[-1].split())
    assert set(sysfs) == {"removable", "size"}, lines[-1]
    return properties, int(sysfs["size"]), sysfs["removable"] == "1"


def fixture_disk(name: str) -> Disk:
    properties, size, removable = load_fixture(name)
    disk = disk_from_properties(
        properties["DEVNAME"].removeprefix("/dev/"), properties, size, removable
    )
    assert disk is not None
    return disk


# --- (1) recorded udev property sets --------------------------------------------------


def test_fixtures_present() -> None:
    assert sorted(p.name for p in FIXTURES.glob("*.properties")) == [
        "host-loop.properties",
        "qemu-sda.properties",
        "qemu-sdb.properties",
        "qemu-vda.properties",
    ]


def test_the_recorded_loop_device_is_left_out_of_the_facts() -> None:
    properties, size, removable = load_fixture("host-loop")
    assert disk_from_properties("loop0", properties, size, removable) is None


@pytest.mark.parametrize(
    ("fixture", "name", "bus", "removable", "serial"),
    [
        # ID_SERIAL_SHORT wins over ID_SERIAL
        pytest.param("qemu-sdb", "sdb", "usb", True, "1-0000:00:04.0-1", id="usb-is-removable"),
        pytest.param("qemu-sda", "sda", "ata", False, "QM00005", id="sata-is-fixed"),
    ],
)
def test_recorded_disk_has_its_bus_removability_and_serial(
    fixture: str, name: str, bus: str, removable: bool, serial: str
) -> None:
    disk = fixture_disk(fixture)
    assert (disk.name, disk.bus, disk.removable, disk.serial) == (name, bus, removable, serial)
    assert disk.size_bytes == 64 * MiB
    assert disk.model == "QEMU_HARDDISK"


def test_virtio_disk_bus_comes_from_devpath() -> None:
    properties, size, removable = load_fixture("qemu-vda")
    assert "ID_BUS" not in properties  # udev gives virtio disks no ID_BUS
    disk = fixture_disk("qemu-vda")
    assert disk.name == "vda"
    assert disk.bus == "virtio"
    assert disk.removable is False
    assert disk.size_bytes == 2457600 * 512 == 1_258_291_200
    assert disk.model is None
    assert disk.serial is None


def test_usb_bus_from_usb_driver_when_id_bus_missing() -> None:
    properties, size, removable = load_fixture("qemu-sdb")
    del properties["ID_BUS"]
    disk = disk_from_properties("sdb", properties, size, removable)
    assert disk is not None and disk.bus == "usb"


def test_serial_falls_back_to_id_serial() -> None:
    properties, size, removable = load_fixture("qemu-sda")
    del properties["ID_SERIAL_SHORT"]
    disk = disk_from_properties("sda", properties, size, removable)
    assert disk is not None and disk.serial == "QEMU_HARDDISK_QM00005"


@pytest.mark.parametrize("name", ["loop0", "ram0", "zram0", "nbd3"])
def test_virtual_disks_are_skipped(name: str) -> None:
    assert disk_from_properties(name, {"DEVTYPE": "disk"}, 1024, False) is None


@pytest.mark.parametrize("name", ["mmcblk0", "nvme0n1", "sdc", "dm-0"])
def test_other_disks_are_kept_without_any_properties(name: str) -> None:
    disk = disk_from_properties(name, {}, 0, False)
    assert disk == Disk(name=name, size_bytes=0)


def test_negative_size_is_skipped() -> None:
    assert disk_from_properties("sda", {}, -1, False) is None


# --- (3) DMI and procfs from a fake tree ----------------------------------------------


def _fake_dmi(root: Path, values: dict[str, str]) -> Path:
    dmi = root / "class" / "dmi" / "id"
    dmi.mkdir(parents=True)
    for name, value in values.items():
        (dmi / name).write_text(value, encoding="utf-8")
    return dmi


def test_dmi_from_fake_sysfs(tmp_path: Path) -> None:
    dmi = _fake_dmi(
        tmp_path,
        {
            "product_uuid": "4c4c4544-0035-4810-8052-b4c04f4e3132\n",
            "product_name": "  PowerEdge R640 \n",
            "sys_vendor": "Dell Inc.\n",
            "board_serial": "\n",  # empty: omitted
            "chassis_type": "23\n",
            "modalias": "dmi:bvnDell:\n",  # not a reported field
        },
    )
    (dmi / "product_serial").mkdir()  # unreadable as a file, even for root: omitted
    assert read_dmi(tmp_path) == {
        "product_uuid": "4c4c4544-0035-4810-8052-b4c04f4e3132",
        "product_name": "PowerEdge R640",
        "sys_vendor": "Dell Inc.",
        "chassis_type": "23",
    }


def test_collect_uses_sys_root_for_dmi(tmp_path: Path) -> None:
    _fake_dmi(tmp_path, {"product_uuid": "abc\n", "bios_version": "1.2.3\n"})
    facts = collect(sys_root=tmp_path)
    assert facts.dmi == {"product_uuid": "abc", "bios_version": "1.2.3"}


def test_no_dmi_directory_gives_empty_dmi(tmp_path: Path) -> None:
    assert read_dmi(tmp_path) == {}
    assert collect(sys_root=tmp_path, proc_root=tmp_path).dmi == {}


def test_overlong_dmi_value_is_clipped(tmp_path: Path) -> None:
    _fake_dmi(tmp_path, {"product_name": "x" * 1000})
    facts = collect(sys_root=tmp_path, proc_root=tmp_path)
    assert facts.dmi == {"product_name": "x" * 256}


def test_arm_cpuinfo_and_meminfo_from_fake_proc(tmp_path: Path) -> None:
    (tmp_path / "cpuinfo").write_text(
        "processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd\n\n"
        "processor\t: 1\nBogoMIPS\t: 108.00\n\n"
        "Hardware\t: BCM2835\nRevision\t: c03114\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n",
        encoding="utf-8",
    )
    (tmp_path / "meminfo").write_text(
        "MemTotal:        3880272 kB\nMemFree:          123 kB\n", encoding="utf-8"
    )
    facts = collect(sys_root=tmp_path, proc_root=tmp_path)
    assert facts.cpu.model == "BCM2835"
    assert facts.cpu.count == os.cpu_count()
    assert facts.memory.total_bytes == 3880272 * 1024


def test_missing_proc_gives_defaults_not_errors(tmp_path: Path) -> None:
    facts = collect(sys_root=tmp_path, proc_root=tmp_path / "nope")
    assert facts.cpu.model is None
    assert facts.cpu.count == os.cpu_count()
    assert facts.memory.total_bytes == 0


# --- (2) and (4) this real machine ----------------------------------------------------


@pytest.fixture(scope="module")
def real_facts() -> Facts:
    return collect()


def test_real_facts_roundtrip(real_facts: Facts) -> None:
    assert Facts.model_validate_json(real_facts.model_dump_json()) == real_facts


def test_real_host(real_facts: Facts) -> None:
    assert real_facts.hostname == socket.gethostname()
    assert real_facts.kernel == platform.release()
    assert real_facts.arch == platform.machine()


def test_real_cpu_and_memory(real_facts: Facts) -> None:
    assert real_facts.cpu.count == os.cpu_count()
    assert real_facts.memory.total_bytes > 0
    if Path("/proc/cpuinfo").read_text(encoding="utf-8").count("model name"):
        assert real_facts.cpu.model


def test_real_nics(real_facts: Facts) -> None:
    net = Path("/sys/class/net")
    expected = sorted(p.name for p in net.iterdir() if p.name != "lo")
    if expected:
        assert real_facts.nics
    assert [n.name for n in real_facts.nics] == expected
    for nic in real_facts.nics:
        address = (net / nic.name / "address").read_text(encoding="utf-8").strip()
        assert nic.mac == (address or None)


def test_real_disks_match_lsblk(real_facts: Facts) -> None:
    lsblk = shutil.which("lsblk")
    assert lsblk is not None, "util-linux's lsblk is part of every Debian install"
    out = subprocess.run(
        [lsblk, "-dn", "-o", "NAME"], check=True, capture_output=True, text=True
    ).stdout
    expected = sorted(name for name in out.split() if not name.startswith(VIRTUAL_PREFIXES))
    assert [d.name for d in real_facts.disks] == expected
    for disk in real_facts.disks:
        sectors = int(Path("/sys/block", disk.name, "size").read_text(encoding="utf-8"))
        assert disk.size_bytes == sectors * 512
        removable = Path("/sys/block", disk.name, "removable").read_text(encoding="utf-8")
        assert disk.removable is (removable.strip() == "1")


def test_collect_with_explicit_udev_context() -> None:
    facts = collect(context=pyudev.Context())
    assert [d.name for d in facts.disks] == [d.name for d in collect().disks]


def test_real_dmi_is_read_or_absent(real_facts: Facts) -> None:
    """On a board with DMI every readable field is reported; on one without (this VM has no
    /sys/class/dmi), the facts carry no DMI at all rather than failing."""
    base = Path("/sys/class/dmi/id")
    if not base.exists():
        assert real_facts.dmi == {}
        return
    for field in DMI_FIELDS:
        try:
            value = (base / field).read_text(encoding="utf-8").strip()
        except OSError:
            assert field not in real_facts.dmi
            continue
        assert real_facts.dmi.get(field) == (value[:256] or None)
    if os.access(base / "product_uuid", os.R_OK):
        assert real_facts.dmi["product_uuid"]


# --- never raises ---------------------------------------------------------------------


class _BrokenAttributes:
    def get(self, name: str) -> bytes:
        raise OSError(5, "Input/output error")


class _OddDevice:
    """A udev device (third-party shape) whose sysfs attributes cannot be read."""

    def __init__(self, sys_name: str) -> None:
        self.sys_name = sys_name
        self.properties: dict[str, str] = {}
        self.attributes = _BrokenAttributes()


class _OddContext:
    """A stand-in for ``pyudev.Context``: enumeration of disks fails, NICs have no address."""

    def list_devices(self, subsystem: str, **match: str) -> list[_OddDevice]:
        if subsystem == "block":
            raise OSError(2, "No such file or directory: '/sys/class/block'")
        return [_OddDevice("lo"), _OddDevice("eth9")]


def test_unreadable_udev_devices_are_left_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    facts = collect(sys_root=tmp_path, proc_root=tmp_path, context=_OddContext())
    assert facts.disks == []
    assert [(n.name, n.mac) for n in facts.nics] == [("eth9", None)]
    assert "cannot collect disks" in caplog.text
