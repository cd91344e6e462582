"""The agent's durable state directory. Every write is atomic: temp file, fsync, rename,
fsync of the directory. A ``kill -9`` or power cut leaves either the old file or the new one.

A simulated device (thousands in one process) may skip the fsyncs: ``StateDir(root,
fsync=False)``. The rename still makes each write all-or-nothing for a crash of the process.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Temp files are named ``.<name>.tmp-<pid>-<random>``; readers never look at them.
TMP_MARKER = ".tmp-"


def atomic_write(path: Path, data: bytes, mode: int = 0o644, *, fsync: bool = True) -> None:
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


def read_json(path: Path) -> Any | None:
    """The JSON in ``path``, or None when the file does not exist."""
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None


@dataclass(frozen=True)
class StateDir:
    root: Path
    fsync: bool = True

    @property
    def key(self) -> Path:
        return self.root / "device-key.pem"

    @property
    def cert(self) -> Path:
        return self.root / "device.pem"

    @property
    def ca(self) -> Path:
        return self.root / "ca.pem"

    @property
    def identity(self) -> Path:
        return self.root / "identity.json"

    @property
    def agent(self) -> Path:
        """What the agent has observed and reported (``daemon.AgentState``)."""
        return self.root / "agent.json"

    @property
    def spec(self) -> Path:
        """The last spec pulled, with its ETag. It may hold a join token: 0600."""
        return self.root / "spec.json"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox.json"

    def reconciler(self, name: str) -> Path:
        """A reconciler's own durable state, for example the files it manages."""
        return self.root / "reconcilers" / f"{name}.json"

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def write(self, path: Path, data: bytes, mode: int = 0o644) -> None:
        atomic_write(path, data, mode, fsync=self.fsync)

    def write_json(self, path: Path, data: Any, mode: int = 0o600) -> None:
        self.write(path, json.dumps(data, indent=1, sort_keys=True).encode(), mode)

    def read_identity(self) -> dict[str, Any] | None:
        if not (self.identity.exists() and self.cert.exists() and self.key.exists()):
            return None
        data: dict[str, Any] = json.loads(self.identity.read_text())
        return data

    def write_identity(self, data: dict[str, Any]) -> None:
        self.write(self.identity, json.dumps(data, indent=2, sort_keys=True).encode())
