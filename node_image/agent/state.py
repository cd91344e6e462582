"""The agent's durable state directory. Every write is atomic: temp file, fsync, rename,
fsync of the directory. A ``kill -9`` or power cut leaves either the old file or the new one."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@dataclass(frozen=True)
class StateDir:
    root: Path

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

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def read_identity(self) -> dict[str, Any] | None:
        if not (self.identity.exists() and self.cert.exists() and self.key.exists()):
            return None
        data: dict[str, Any] = json.loads(self.identity.read_text())
        return data

    def write_identity(self, data: dict[str, Any]) -> None:
        atomic_write(self.identity, json.dumps(data, indent=2, sort_keys=True).encode())
