"""The build cache of ``corral image build-base``: one directory per stage result, named by
a hash of everything that went into it.

``~/.cache/corral/image/<stage>-<key>/`` holds a finished result; a result is built in a
temp sibling and renamed into place only once complete, so an interrupted build never leaves
a half-written entry that a later build would take for a hit. ``CORRAL_CACHE_DIR`` moves the
whole cache (tests and benchmarks point it at a directory of their own).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from collections.abc import Iterable
from pathlib import Path

#: The environment variable that overrides the cache directory.
CACHE_ENV = "CORRAL_CACHE_DIR"
#: Older entries of a stage beyond this many are removed after a build (each is 100s of MB).
KEEP_PER_STAGE = 3


def default_cache_dir() -> Path:
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "corral"


class Key:
    """A running sha256 over named inputs: strings, bytes and whole directory trees."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self._h = hashlib.sha256(stage.encode())

    def text(self, name: str, value: str) -> Key:
        return self.data(name, value.encode())

    def data(self, name: str, value: bytes) -> Key:
        self._h.update(f"\0{name}\0{len(value)}\0".encode())
        self._h.update(value)
        return self

    def tree(self, name: str, root: Path, suffixes: Iterable[str] | None = None) -> Key:
        """Every file under ``root`` (path, mode bits and content; symlink targets), sorted."""
        wanted = tuple(suffixes) if suffixes is not None else None
        for path in sorted(p for p in root.rglob("*") if not _skipped(p.relative_to(root))):
            rel = path.relative_to(root).as_posix()
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                self.text(f"{name}:{rel}:link", os.readlink(path))
            elif stat.S_ISREG(st.st_mode):
                if wanted is not None and not rel.endswith(wanted):
                    continue
                self.data(f"{name}:{rel}:{st.st_mode & 0o7777:o}", path.read_bytes())
        return self

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def _skipped(rel: Path) -> bool:
    return any(part == "__pycache__" or part.startswith(".") for part in rel.parts)


class Cache:
    """Stage results under ``root/image``: :meth:`lookup` a key, or :meth:`begin` one."""

    def __init__(self, root: Path) -> None:
        self.root = root / "image"

    def entry(self, stage: str, key: str) -> Path:
        return self.root / f"{stage}-{key[:24]}"

    def lookup(self, stage: str, key: str) -> Path | None:
        path = self.entry(stage, key)
        return path if (path / ".complete").is_file() else None

    def begin(self, stage: str, key: str) -> Path:
        """A fresh temp directory to build the entry in; :meth:`commit` moves it into place."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.sweep()
        tmp = self.root / f".{stage}-{key[:24]}.tmp-{os.getpid()}"
        if tmp.exists():
            remove_tree(tmp)
        tmp.mkdir()
        return tmp

    def sweep(self) -> None:
        """Remove what builds that died left (``kill -9``, power): their temp directories,
        unmounting the chroot's mounts first. A temp directory of a live process is kept."""
        for tmp in self.root.glob(".*.tmp-*"):
            pid = tmp.name.rsplit("-", 1)[-1]
            if not pid.isdigit() or _alive(int(pid)):
                continue
            for point in mounts_under(tmp):
                subprocess.run(  # noqa: S603 - our own mount points
                    ["umount", "--lazy", point],  # noqa: S607
                    check=False,
                    capture_output=True,
                )
            remove_tree(tmp)

    def commit(self, stage: str, key: str, tmp: Path) -> Path:
        (tmp / ".complete").write_text(key + "\n")
        final = self.entry(stage, key)
        if final.exists():
            remove_tree(final)
        os.replace(tmp, final)
        self._prune(stage, keep=final)
        return final

    def _prune(self, stage: str, keep: Path) -> None:
        entries = sorted(
            (p for p in self.root.glob(f"{stage}-*") if p != keep and p.is_dir()),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        for old in entries[KEEP_PER_STAGE - 1 :]:
            remove_tree(old)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_tree(path: Path) -> None:
    """Remove a directory tree that may hold a root filesystem (device nodes, read-only dirs)."""
    if not path.exists():
        return
    busy = mounts_under(path)
    if busy:
        raise OSError(f"refusing to remove {path}: {busy[0]} is still mounted")
    for p in path.rglob("*"):
        try:
            if p.is_dir() and not p.is_symlink():
                p.chmod(0o755)
        except OSError:
            pass
    shutil.rmtree(path)


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` (deepest first), from /proc/self/mounts."""
    top = str(path.resolve())
    found = []
    with open("/proc/self/mounts") as f:
        for line in f:
            point = line.split()[1].replace("\\040", " ")
            if point == top or point.startswith(top + "/"):
                found.append(point)
    return sorted(found, key=len, reverse=True)
