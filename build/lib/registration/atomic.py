"""Atomic file writes, for both sides: temp file, fsync, rename, fsync of the directory.

A ``kill -9`` or a power cut leaves either the old file or the new one, never a mix. Each
writer gets its own temp name, so concurrent writers of one path never share a temp file;
the last rename wins whole.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

#: Temp files are named ``.<name>.tmp-<pid>-<random>``; readers never look at them.
TMP_MARKER = ".tmp-"


def atomic_write(path: Path, data: bytes, mode: int = 0o644, *, fsync: bool = True) -> None:
    """Replace ``path`` with ``data``, readable with ``mode`` from its first byte.

    ``fsync=False`` (thousands of simulated devices in one process) keeps the rename, so a
    crash of the process still leaves old or new, but a power cut may lose the write.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def remove_stale_temps(path: Path) -> int:
    """Delete the temp files an interrupted :func:`atomic_write` of ``path`` left behind.

    Call it only while nothing else writes ``path``. Returns how many were removed.
    """
    prefix = f".{path.name}{TMP_MARKER}"
    removed = 0
    try:
        entries = list(path.parent.iterdir())
    except FileNotFoundError:
        return 0
    for entry in entries:
        if entry.name.startswith(prefix) and entry.is_file():
            entry.unlink(missing_ok=True)
            removed += 1
    return removed
