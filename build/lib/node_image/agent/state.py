"""The agent's durable state directory. Every write is atomic (``registration.atomic``):
temp file, fsync, rename, fsync of the directory. A ``kill -9`` or power cut leaves either
the old file or the new one. A file that does not parse stops the agent with one line that
names it and says what to do (:class:`CorruptStateFile`).

A simulated device (thousands in one process) may skip the fsyncs: ``StateDir(root,
fsync=False)``. The rename still makes each write all-or-nothing for a crash of the process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node_image.errors import AgentError
from registration.atomic import TMP_MARKER, atomic_write, remove_stale_temps

__all__ = [
    "TMP_MARKER",
    "CorruptStateFile",
    "StateDir",
    "atomic_write",
    "read_json",
    "remove_stale_temps",
]

#: What to do about a corrupt file, by name; the default suits every file the agent rebuilds.
_REMEDY = {
    "identity.json": "move it aside and start the agent with its seed: it registers again "
    "and the same machine keeps its device record",
}
_REBUILT = "move it aside and start the agent again: it rebuilds the file from the server"


class CorruptStateFile(AgentError, ValueError):
    """A state file that does not parse; the message names it and says what to do."""

    def __init__(self, path: Path, problem: str) -> None:
        remedy = _REMEDY.get(path.name, _REBUILT)
        super().__init__(f"state file {path} is corrupt ({problem}); {remedy}")
        self.path = path


def read_json(path: Path) -> Any | None:
    """The JSON in ``path``, or None when the file does not exist.

    Raises :class:`CorruptStateFile` (an ``AgentError``) when it is not JSON.
    """
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except UnicodeDecodeError as e:
        raise CorruptStateFile(path, f"not UTF-8 at byte {e.start}") from e
    except json.JSONDecodeError as e:
        raise CorruptStateFile(path, f"not JSON: {e}") from e


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
    def update_signing_pub(self) -> Path:
        """The server's update-signing key (ed25519, raw, base64), pinned at registration."""
        return self.root / "update-signing.pub"

    def update_signing_key(self) -> str | None:
        """The pinned update-signing key, or None before a server that has one answered."""
        try:
            text = self.update_signing_pub.read_text().strip()
        except FileNotFoundError:
            return None
        return text or None

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
        data = read_json(self.identity)
        if not isinstance(data, dict) or not isinstance(data.get("device_id"), str):
            raise CorruptStateFile(self.identity, "no device_id in it")
        return data

    def write_identity(self, data: dict[str, Any]) -> None:
        self.write(self.identity, json.dumps(data, indent=2, sort_keys=True).encode())
