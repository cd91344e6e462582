"""Streamed writes of an image to a slot (a regular file or a block device) and reading back.

Chunks are written as they come, hashed on the way, and fsynced before the write counts, so
the sha256 returned is of the bytes handed to the kernel. :func:`read_back` rereads them from
the slot for verification. A regular file is truncated to what was written; a block device
keeps whatever lies past it. Blocking: call through ``asyncio.to_thread``.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from node_image.errors import AgentError

CHUNK = 1 << 20


@dataclass(frozen=True)
class SlotWrite:
    size: int
    sha256: str


def write_stream(target: Path, chunks: Iterable[bytes]) -> SlotWrite:
    """Write ``chunks`` from the start of ``target``; fsync; the size and sha256 written."""
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    digest = hashlib.sha256()
    size = 0
    try:
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            digest.update(chunk)
            size += len(chunk)
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)
    return SlotWrite(size, digest.hexdigest())


def read_back(target: Path, size: int) -> str:
    """The sha256 of the first ``size`` bytes of ``target``, reread from the disk.

    The page cache is dropped first (the pages are clean after :func:`write_stream`'s
    fsync), so what is hashed comes from the device, not from memory.
    """
    digest = hashlib.sha256()
    read = 0
    with open(target, "rb", buffering=0) as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        while read < size:
            chunk = f.read(min(CHUNK, size - read))
            if not chunk:
                break
            digest.update(chunk)
            read += len(chunk)
    if read != size:
        raise AgentError(f"{target} holds only {read} of the {size} bytes written")
    return digest.hexdigest()


def file_chunks(path: Path, chunk_size: int = CHUNK) -> Iterator[bytes]:
    """The file at ``path`` in chunks, for :func:`write_stream`."""
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            yield chunk
