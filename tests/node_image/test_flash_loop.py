"""``corral image flash`` on real block devices: loop devices on files in tmp, the root disk of
this machine, a mounted file system. The CLI runs in subprocesses, as an operator runs it."""

from __future__ import annotations

import hashlib
import json
import os
import select
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from node_image.errors import AgentError
from node_image.image import flash
from tests.node_image.test_flash_candidates import _disk_backing_root

CORRAL = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "corral"
MiB = 1 << 20
FILL = b"\xee"


def corral(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CORRAL), "image", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )


def refused(result: subprocess.CompletedProcess[str], reason: str) -> None:
    """Exit 1 and one line on stderr that gives ``reason``; nothing on stdout."""
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("corral: error: "), result.stderr
    assert reason in lines[0]
    assert result.stdout == ""


def in_terminal(args: list[str], answer: str) -> tuple[int, str]:
    """Run ``corral image …`` on a pseudo-terminal; answer its question with ``answer``.
    The exit code and everything it showed."""
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [str(CORRAL), "image", *args], stdin=slave, stdout=slave, stderr=slave, close_fds=True
    )
    os.close(slave)
    shown, answered = b"", False
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            if not answered and b"Type 'yes' to write: " in shown:
                os.write(master, answer.encode() + b"\n")
                answered = True
            if select.select([master], [], [], 1.0)[0]:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the process is gone and the terminal closed
                    break
                if not chunk:
                    break
                shown += chunk
        return proc.wait(timeout=60), shown.decode(errors="replace")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@contextmanager
def loop_device(backing: Path) -> Iterator[str]:
    device = subprocess.run(
        ["losetup", "--find", "--show", str(backing)], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "--detach", device], check=False)


def read_device(device: str, size: int) -> bytes:
    """The first ``size`` bytes of ``device`` from the disk, not the page cache."""
    fd = os.open(device, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        data = b""
        while len(data) < size and (chunk := os.read(fd, size - len(data))):
            data += chunk
        return data
    finally:
        os.close(fd)


def make(path: Path, size: int, data: bytes | None = None) -> Path:
    path.write_bytes(data if data is not None else FILL * size)
    return path


@pytest.fixture
def image(tmp_path: Path) -> Path:
    # Not a multiple of 4096: the unaligned tail goes out without O_DIRECT.
    return make(tmp_path / "seed.iso", 0, os.urandom(8 * MiB + 1000))


@pytest.fixture
def stick(tmp_path: Path) -> Iterator[str]:
    """A loop device on ``tmp_path/stick.img``: 16 MiB of FILL."""
    with loop_device(make(tmp_path / "stick.img", 16 * MiB)) as device:
        yield device


def test_flash_to_a_loop_device_writes_verifies_and_reports_the_sha256(
    stick: str, image: Path
) -> None:
    data = image.read_bytes()
    result = corral("flash", str(image), "--device", stick, "--yes")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"sha256 {hashlib.sha256(data).hexdigest()}  {stick}\n"
    on_device = read_device(stick, 16 * MiB)
    assert on_device[: len(data)] == data
    assert on_device[len(data) :] == FILL * (16 * MiB - len(data))


def test_the_root_disk_is_refused(image: Path) -> None:
    # Refused by the filter, before the device is opened at all (this sandbox does not even
    # let root open it for reading, so its bytes cannot be compared here).
    root = f"/dev/{_disk_backing_root()}"
    refused(corral("flash", str(image), "--device", root, "--yes"), "holds the running system (/)")


def test_a_mounted_device_is_refused(tmp_path: Path, image: Path) -> None:
    backing = make(tmp_path / "mounted.img", 32 * MiB)
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    # Inode tables and journal initialised now: mounted, ext4 otherwise zeroes them in the
    # background (ext4lazyinit), and the device would change without any flashing.
    lazy = "lazy_itable_init=0,lazy_journal_init=0"
    subprocess.run(["mkfs.ext4", "-q", "-E", lazy, str(backing)], check=True)
    with loop_device(backing) as device:
        subprocess.run(["mount", device, str(mount_point)], check=True)
        try:
            before = read_device(device, 8 * MiB)
            result = corral("flash", str(image), "--device", device, "--yes")
            refused(result, f"is mounted at {mount_point}")
            assert read_device(device, 8 * MiB) == before
            # Behind the filter, the kernel's O_EXCL refuses the mounted device too.
            with pytest.raises(flash.FlashRefused, match="the kernel says it is in use"):
                flash.write_image(image, device, image.stat().st_size, lambda n: None)
        finally:
            subprocess.run(["umount", str(mount_point)], check=False)


def test_a_device_smaller_than_the_image_is_refused(tmp_path: Path, image: Path) -> None:
    backing = make(tmp_path / "small.img", 4 * MiB)
    with loop_device(backing) as device:
        result = corral("flash", str(image), "--device", device, "--yes")
        refused(result, f"is smaller than the image ({4 * MiB} < {8 * MiB + 1000} bytes)")
        assert read_device(device, 4 * MiB) == FILL * (4 * MiB)


def test_a_path_that_is_not_a_block_device_is_refused(tmp_path: Path, image: Path) -> None:
    regular = make(tmp_path / "disk.img", 16 * MiB)
    refused(corral("flash", str(image), "--device", str(regular), "--yes"), "not a block device")
    assert regular.read_bytes() == FILL * (16 * MiB)
    refused(corral("flash", str(image), "--device", "/dev/null", "--yes"), "not a block device")
    missing = str(tmp_path / "nothing")
    refused(corral("flash", str(image), "--device", missing, "--yes"), "no such device")


def test_without_a_terminal_and_without_yes_nothing_is_written(stick: str, image: Path) -> None:
    refused(corral("flash", str(image), "--device", stick), "add --yes")
    assert read_device(stick, 16 * MiB) == FILL * (16 * MiB)


def test_a_loop_device_is_never_offered(stick: str, image: Path) -> None:
    refused(corral("flash", str(image), "--yes"), "no removable or USB disk")
    listing = corral("devices", "--all", "-o", "json")
    assert listing.returncode == 0, listing.stderr
    rows = {row["device"]: row for row in json.loads(listing.stdout)}
    assert rows[stick]["refused"] == ["is a loop device (accepted only when named with --device)"]
    assert rows[stick]["size"] == 16 * MiB and rows[stick]["bus"] == "loop"
    root = rows[f"/dev/{_disk_backing_root()}"]
    assert "holds the running system (/)" in root["refused"]
    candidates = corral("devices", "-o", "json")
    assert stick not in {row["device"] for row in json.loads(candidates.stdout)}
    assert read_device(stick, 16 * MiB) == FILL * (16 * MiB)


def test_a_device_that_reads_back_other_bytes_fails_verification(stick: str, image: Path) -> None:
    size = image.stat().st_size
    flash.write_image(image, stick, size, lambda n: None)
    sha256 = flash.verify(image, stick, size, lambda n: None)
    assert sha256 == hashlib.sha256(image.read_bytes()).hexdigest()
    with open(stick, "r+b") as f:  # one byte changes on the device
        f.seek(5 * MiB)
        f.write(b"\x00" if image.read_bytes()[5 * MiB] else b"\x01")
        os.fsync(f.fileno())
    with pytest.raises(AgentError, match="verification failed"):
        flash.verify(image, stick, size, lambda n: None)


def test_the_confirmation_names_model_size_and_serial_and_no_writes_nothing(
    tmp_path: Path, stick: str, image: Path
) -> None:
    data = image.read_bytes()
    args = ["flash", str(image), "--device", stick]
    code, shown = in_terminal(args, "no")
    backing = tmp_path / "stick.img"
    question = f"Write {image} (8.0 MiB) to {stick}: loop on {backing}, 16.0 MiB, serial -?"
    assert question in shown
    assert code == 1 and "not confirmed; nothing written" in shown
    assert read_device(stick, 16 * MiB) == FILL * (16 * MiB)
    code, shown = in_terminal(args, "yes")
    assert code == 0, shown
    assert f"writing {stick}  100%" in shown and f"verifying {stick}  100%" in shown
    assert f"sha256 {hashlib.sha256(data).hexdigest()}  {stick}" in shown
    assert read_device(stick, len(data)) == data
