"""The artifact mirror's files: ``<data>/artifacts/<sha256>``, content-addressed.

An upload streams into a temporary file in the same directory, hashing as it writes; only a
complete upload (every announced byte, the expected sha256) is fsynced and renamed to its
sha256. On any error the temporary file is removed: nothing is stored. All file work here
blocks; the API runs it in threads (``asyncio.to_thread``).

:class:`Served` counts what the content endpoint actually wrote to clients, for
``/api/v1/stats``: a download cut at 50 % and resumed with Range costs about one size.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from edge_server.errors import BadRequest, StorageFull

TMP_PREFIX = ".upload-"
#: Bytes left free on the data disk after an upload (the database needs room too).
RESERVE = 64 << 20


@dataclass(frozen=True)
class Received:
    """A complete upload, in its temporary file, not yet named."""

    tmp: Path
    sha256: str
    size: int


class Upload:
    """One upload into ``directory``: ``open``, ``write`` each chunk, then ``finish``;
    ``discard`` on any error. Blocking."""

    def __init__(self, directory: Path, expected_size: int) -> None:
        self.directory = directory
        self.expected_size = expected_size
        self.tmp = directory / f"{TMP_PREFIX}{secrets.token_hex(8)}"
        self.digest = hashlib.sha256()
        self.size = 0
        self._file: IO[bytes] | None = None

    def open(self, reserve: int = RESERVE) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        free = shutil.disk_usage(self.directory).free
        if self.expected_size + reserve > free:
            raise StorageFull(
                f"not enough space for {self.expected_size} bytes: {free} free, "
                f"{reserve} kept free for the database; delete old artifacts first",
                code="no_space",
            )
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._file = os.fdopen(fd, "wb")

    def write(self, chunk: bytes) -> None:
        if self._file is None:
            raise BadRequest("upload is not open")
        if self.size + len(chunk) > self.expected_size:
            raise BadRequest(
                f"the body is longer than its Content-Length ({self.expected_size})",
                code="bad_length",
            )
        self._file.write(chunk)
        self.digest.update(chunk)
        self.size += len(chunk)

    def finish(self, sha256: str | None) -> Received:
        """Check length and sha256, then make the bytes durable (still under the temp name)."""
        if self._file is None:
            raise BadRequest("upload is not open")
        if self.size != self.expected_size:
            raise BadRequest(
                f"truncated upload: {self.size} of {self.expected_size} bytes arrived; "
                "nothing was stored",
                code="truncated_upload",
            )
        got = self.digest.hexdigest()
        if sha256 is not None and got != sha256:
            raise BadRequest(
                f"sha256 mismatch: the upload has {got}, expected {sha256}; nothing was stored",
                code="sha256_mismatch",
            )
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        return Received(self.tmp, got, self.size)

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self.tmp.unlink(missing_ok=True)


def path_of(directory: Path, sha256: str) -> Path:
    return directory / sha256


def place(directory: Path, received: Received) -> Path:
    """Name the received bytes by their sha256 (identical bytes are kept once)."""
    final = path_of(directory, received.sha256)
    os.replace(received.tmp, final)
    _fsync_dir(directory)
    return final


def remove(directory: Path, sha256: str) -> None:
    path_of(directory, sha256).unlink(missing_ok=True)
    _fsync_dir(directory)


def remove_stale_uploads(directory: Path) -> int:
    """Temporary files an earlier run left behind (a crash mid-upload). At start."""
    removed = 0
    for path in directory.glob(f"{TMP_PREFIX}*"):
        path.unlink(missing_ok=True)
        removed += 1
    return removed


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Served:
    """What ``GET /api/v1/artifacts/{id}/content`` handed to clients since start."""

    requests: int = 0
    range_requests: int = 0
    completed: int = 0
    bytes_served: int = 0
