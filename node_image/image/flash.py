"""``corral image flash``: write an image to a whole disk, then read it back and verify it.

:func:`flash` reads as its steps: check the target, write, verify.

- **Check** (:func:`check_target`): the device must be a block device and pass the candidate
  filter (:mod:`node_image.image.candidates`) against what the running system uses, read
  fresh just before the write. Nothing is opened for writing before that.
- **Write** (:func:`write_image`): the device is opened ``O_EXCL`` (the kernel refuses a
  mounted or otherwise claimed block device with EBUSY, a second guard behind the filter) and
  ``O_DIRECT``; the image goes out in 4 MiB blocks from page-aligned ``mmap`` buffers (the
  unaligned tail, if any, with ``O_DIRECT`` turned off), then ``fsync``. A thread reads the
  next block while the current one is written; nothing else costs CPU here, so the write
  keeps up with ``dd`` even on a busy machine.
- **Verify** (:func:`verify`): the device is read back with ``O_DIRECT`` (not from the page
  cache), a thread reading ahead of the hashing, while another thread hashes the image file;
  the two sha256 must match. (Hashing the image while writing was tried: on a loaded 2-core
  machine the hash's CPU slowed the write to ~0.7x dd.)

Blocking throughout; the CLI calls it directly.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import mmap
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from node_image.errors import AgentError
from node_image.image import candidates
from node_image.image.candidates import BlockDevice
from node_image.image.system_disks import read_system_disks

log = logging.getLogger(__name__)

BLOCK = 4 << 20
#: Buffers in flight: one being read, one being written or hashed, one spare.
DEPTH = 3
#: O_DIRECT needs offsets and lengths in multiples of the logical block size (512 or 4096).
ALIGN = 4096
#: ioctl: re-read the partition table, so the new image's partitions show up.
BLKRRPART = 0x125F

Advance = Callable[[int], None]


class FlashRefused(AgentError):
    """The target may not be written; nothing was."""


@dataclass(frozen=True)
class FlashResult:
    device: str
    size: int
    sha256: str
    write_seconds: float
    verify_seconds: float


def image_size(image: Path) -> int:
    try:
        st = image.stat()
    except OSError as e:
        raise FlashRefused(f"cannot read the image {image}: {e.strerror}") from e
    if not image.is_file():
        raise FlashRefused(f"the image {image} is not a regular file")
    if st.st_size == 0:
        raise FlashRefused(f"the image {image} is empty")
    return st.st_size


def check_target(path: str, size: int, *, explicit: bool = True) -> BlockDevice:
    """The device at ``path`` if ``size`` bytes may be written to it; else FlashRefused."""
    try:
        device = candidates.device_at(path)
    except AgentError as e:
        raise FlashRefused(str(e)) from e
    why = candidates.refusals(device, read_system_disks(), size, explicit=explicit)
    if why:
        raise FlashRefused(f"refusing to write to {path}: it {'; it '.join(why)}")
    return device


def flash(image: Path, device_path: str, *, on_write: Advance, on_verify: Advance) -> FlashResult:
    """Check ``device_path``, write ``image`` to it, verify; the result with the sha256."""
    size = image_size(image)
    device = check_target(device_path, size)
    started = time.monotonic()
    write_image(image, device.node or device_path, size, on_write)
    written = time.monotonic()
    sha256 = verify(image, device.node or device_path, size, on_verify)
    verified = time.monotonic()
    return FlashResult(device_path, size, sha256, written - started, verified - written)


def _open_target(path: str) -> int:
    try:
        return os.open(path, os.O_WRONLY | os.O_EXCL | os.O_DIRECT | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.EBUSY:  # mounted, or claimed by dm/md/another O_EXCL opener
            raise FlashRefused(f"refusing to write to {path}: the kernel says it is in use") from e
        raise FlashRefused(f"cannot open {path} for writing: {e.strerror}") from e


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        n = os.write(fd, data)
        data = data[n:]


def _fill(src: int, buf: memoryview) -> int:
    """Read from ``src`` until ``buf`` is full or the file ends; the bytes read."""
    got = 0
    while got < len(buf):
        n = os.readv(src, [buf[got:]])
        if n == 0:
            break
        got += n
    return got


#: (buffer, want) -> bytes read into it (fewer only at the end of the source)
Reader = Callable[[memoryview, int], int]


def _pipeline(read: Reader, total: int, consume: Callable[[memoryview], None]) -> int:
    """``total`` bytes in blocks: a thread reads the next blocks (into page-aligned ``mmap``
    buffers, as O_DIRECT wants) while ``consume`` writes or hashes the current one. Both sides
    spend their time in system calls or hashlib, which release the GIL. The bytes consumed."""
    buffers = [mmap.mmap(-1, BLOCK) for _ in range(DEPTH)]
    free: queue.Queue[int | None] = queue.Queue()
    full: queue.Queue[tuple[int, int] | BaseException | None] = queue.Queue()
    stop = threading.Event()
    for i in range(DEPTH):
        free.put(i)

    def produce() -> None:
        try:
            done = 0
            while done < total:
                i = free.get()
                if i is None or stop.is_set():
                    return
                want = min(BLOCK, total - done)
                with memoryview(buffers[i]) as view:
                    n = min(read(view, want), want)
                full.put((i, n))
                if n < want:
                    break
                done += n
            full.put(None)
        except BaseException as e:  # handed to the consuming thread, which raises it
            full.put(e)

    thread = threading.Thread(target=produce, name="flash-read", daemon=True)
    thread.start()
    consumed = 0
    try:
        while (item := full.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            i, n = item
            with memoryview(buffers[i]) as view:
                consume(view[:n])
            consumed += n
            if n == 0:
                break
            free.put(i)
    finally:
        stop.set()
        free.put(None)
        thread.join()
        for buffer in buffers:
            buffer.close()
    return consumed


def write_image(image: Path, device: str, size: int, advance: Advance) -> None:
    """Write ``size`` bytes of ``image`` to the start of ``device``; fsync."""
    fd = _open_target(path=device)
    try:
        end = os.lseek(fd, 0, os.SEEK_END)
        os.lseek(fd, 0, os.SEEK_SET)
        if end < size:  # the filter checked udev's size; this is the kernel's, at open
            raise FlashRefused(f"refusing to write to {device}: {end} bytes < image {size}")

        def write(block: memoryview) -> None:
            aligned = len(block) - len(block) % ALIGN
            _write_all(fd, block[:aligned])
            if aligned < len(block):  # the tail: O_DIRECT off for the last few bytes
                flags = fcntl.fcntl(fd, fcntl.F_GETFL)
                fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
                _write_all(fd, block[aligned:])
            advance(len(block))

        with open(image, "rb", buffering=0) as src:
            done = _pipeline(lambda view, want: _fill(src.fileno(), view[:want]), size, write)
        if done != size:
            raise AgentError(f"{image} ended at {done} of {size} bytes")
        os.fsync(fd)
        _reread_partitions(fd, device)
    finally:
        os.close(fd)


def _reread_partitions(fd: int, device: str) -> None:
    try:
        fcntl.ioctl(fd, BLKRRPART)
    except OSError as e:  # loop devices without partscan, and the like
        log.debug("%s: partition table not re-read: %s", device, e)


def _hash_device(device: str, size: int, advance: Advance) -> str:
    digest = hashlib.sha256()

    def hash_block(block: memoryview) -> None:
        digest.update(block)
        advance(len(block))

    fd = os.open(device, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
    try:
        # O_DIRECT reads whole logical blocks: the last read is rounded up, then cut.
        done = _pipeline(
            lambda view, want: _fill(fd, view[: want + (-want) % ALIGN]), size, hash_block
        )
    finally:
        os.close(fd)
    if done != size:
        raise AgentError(f"{device} read back only {done} of {size} bytes")
    return digest.hexdigest()


def _hash_file(image: Path) -> str:
    with open(image, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def verify(image: Path, device: str, size: int, advance: Advance) -> str:
    """The sha256 of ``image``, once the device reads back the same; else AgentError."""
    with ThreadPoolExecutor(1) as pool:
        expected = pool.submit(_hash_file, image)
        actual = _hash_device(device, size, advance)
        want = expected.result()
    if actual != want:
        raise AgentError(
            f"verification failed: {device} reads back sha256 {actual}, the image is {want}"
        )
    return want
