"""Boot control on both hosts: the GRUB environment block, A/B slots, simulated reboots,
slot writes to real files and to a real loop device."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from node_image import boot, grubenv
from node_image.boot import BootLayout, RebootRequested
from node_image.commands import run
from node_image.host import LinuxHost, SimulatedHost

# grub-common is in scripts/debian-packages.txt: make test installs it.
GRUB_EDITENV = shutil.which("grub-editenv") or "grub-editenv"


def reboot(host: SimulatedHost) -> str | None:
    with pytest.raises(RebootRequested) as caught:
        host.reboot()
    return caught.value.slot


# --- the GRUB environment block -------------------------------------------------------


def test_the_simulated_block_is_byte_for_byte_what_grub_editenv_writes(tmp_path: Path) -> None:
    host = SimulatedHost(tmp_path / "dev")
    real = tmp_path / "grubenv"
    run(["grub-editenv", str(real), "create"])
    steps: list[tuple[dict[str, str], tuple[str, ...]]] = [
        ({"corral_slot": "A"}, ()),
        ({"corral_next": "B", "corral_tries": "3", "odd": "back\\slash"}, ()),
        ({"corral_tries": "2", "multi": "two\nlines"}, ()),
        ({}, ("corral_next", "odd")),
        ({"corral_slot": "B"}, ("corral_tries",)),
    ]
    for values, unset in steps:
        host.write_grubenv(values, unset)
        if unset:
            run(["grub-editenv", str(real), "unset", *unset])
        if values:
            run(["grub-editenv", str(real), "set", *(f"{k}={v}" for k, v in values.items())])
        assert host.layout.grubenv.read_bytes() == real.read_bytes()
        assert len(real.read_bytes()) == grubenv.SIZE
    assert host.read_grubenv() == {"corral_slot": "B", "multi": "two\nlines"}


def test_linux_host_edits_the_block_with_grub_editenv(tmp_path: Path) -> None:
    layout = BootLayout.under(tmp_path / "state")
    host = LinuxHost(layout)
    assert host.read_grubenv() == {}
    boot.try_next(host, "B", 3)
    assert host.read_grubenv() == {"corral_next": "B", "corral_tries": "3"}
    assert grubenv.parse(layout.grubenv.read_bytes()) == host.read_grubenv()
    boot.mark_good(host, "B")
    assert host.read_grubenv() == {"corral_slot": "B"}
    # The simulated reader understands what grub-editenv wrote.
    sim = SimulatedHost(tmp_path / "dev")
    sim.layout.grubenv.parent.mkdir(parents=True)
    shutil.copyfile(layout.grubenv, sim.layout.grubenv)
    assert sim.read_grubenv() == {"corral_slot": "B"}


def test_a_block_that_would_overflow_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    host = SimulatedHost(tmp_path / "dev")
    host.write_grubenv({"corral_slot": "A"})
    before = host.layout.grubenv.read_bytes()
    with pytest.raises(grubenv.GrubEnvError, match="1024"):
        host.write_grubenv({"big": "x" * 1000})
    with pytest.raises(grubenv.GrubEnvError, match="variable name"):
        host.write_grubenv({"bad=name": "1"})
    assert host.layout.grubenv.read_bytes() == before


# --- slots and reboots ------------------------------------------------------------------


def test_a_simulated_reboot_tries_the_next_slot_until_the_tries_run_out(tmp_path: Path) -> None:
    host = SimulatedHost(tmp_path / "dev")
    assert (host.active_slot(), host.inactive_slot(), host.boots()) == ("A", "B", 1)
    first_boot = host.boot_id()
    boot.mark_good(host, "A")
    boot.try_next(host, "B", 2)

    assert reboot(host) == "B"
    assert host.active_slot() == "B" and host.boot_id() != first_boot
    assert host.read_grubenv()["corral_tries"] == "1"
    # The health check failed (nobody marked B good): GRUB tries once more, then gives up.
    assert reboot(host) == "B"
    assert host.read_grubenv()["corral_tries"] == "0"
    assert reboot(host) == "A"
    assert host.active_slot() == "A" and host.inactive_slot() == "B" and host.boots() == 4


def test_a_slot_marked_good_stays_booted(tmp_path: Path) -> None:
    host = SimulatedHost(tmp_path / "dev")
    boot.try_next(host, "B", 1)
    assert reboot(host) == "B"
    boot.mark_good(host, "B")
    assert host.read_grubenv() == {"corral_slot": "B"}
    assert reboot(host) == "B" and reboot(host) == "B"
    # The state survives a new SimulatedHost on the same directory (an agent restart).
    again = SimulatedHost(tmp_path / "dev")
    assert again.active_slot() == "B" and again.boot_id() == host.boot_id()


def test_slot_names_are_checked(tmp_path: Path) -> None:
    host = SimulatedHost(tmp_path / "dev")
    with pytest.raises(boot.AgentError, match="unknown slot"):
        host.write_slot("C", [b"x"])
    with pytest.raises(boot.AgentError, match="unknown slot"):
        boot.try_next(host, "C", 1)
    assert boot.slot_from_cmdline("quiet corral.slot=B root=live") == "B"
    assert boot.slot_from_cmdline("quiet corral.slot=Z") is None


def chunks(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def test_a_slot_write_streams_fsyncs_and_reads_back(tmp_path: Path) -> None:
    host = SimulatedHost(tmp_path / "dev")
    image = os.urandom(3 * 1024 * 1024 + 17)
    written = host.write_slot("B", chunks(image, 65536))
    assert written.size == len(image)
    assert written.sha256 == hashlib.sha256(image).hexdigest()
    assert host.read_slot_sha256("B", written.size) == written.sha256
    assert host.layout.slot("B").read_bytes() == image
    # A smaller image replaces a larger one whole: the file is cut to what was written.
    small = b"squashfs" * 1000
    again = host.write_slot("B", chunks(small, 4096))
    assert host.layout.slot("B").read_bytes() == small
    assert host.read_slot_sha256("B", again.size) == hashlib.sha256(small).hexdigest()
    with pytest.raises(boot.AgentError, match="only 8000 of the 8001"):
        host.read_slot_sha256("B", again.size + 1)


def test_a_slot_write_to_a_real_loop_device(tmp_path: Path) -> None:
    backing = tmp_path / "slot-b.img"
    backing.write_bytes(b"\xee" * (8 * 1024 * 1024))
    device = run(["losetup", "--find", "--show", str(backing)]).stdout.decode().strip()
    try:
        host = LinuxHost(BootLayout(tmp_path / "grubenv", {"A": tmp_path / "a", "B": Path(device)}))
        image = os.urandom(5 * 1024 * 1024 + 512)
        written = host.write_slot("B", chunks(image, 1 << 20))
        assert written.sha256 == hashlib.sha256(image).hexdigest()
        assert host.read_slot_sha256("B", written.size) == written.sha256
    finally:
        run(["losetup", "--detach", device])
    on_disk = backing.read_bytes()
    # The device keeps its size; what lies past the image is untouched.
    assert on_disk[: len(image)] == image and on_disk[len(image) :] == b"\xee" * (
        len(on_disk) - len(image)
    )
