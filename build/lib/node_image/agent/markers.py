"""Run-once and once-per-boot markers (cloud-init's semaphores), in the state directory.

A step that must not repeat (stage the K3s binary once, mark a slot good once per boot) asks
:meth:`Markers.done` first and calls :meth:`Markers.mark` once it has finished, or wraps
itself in :meth:`Markers.run`. A marker is written atomically (temp file, fsync, rename):
after a crash it either exists or not, so a step is repeated at worst, never half-marked.

- ``ONCE``: ``markers/once/<name>``, done forever (until :meth:`clear`).
- ``PER_BOOT``: ``markers/boot/<name>`` holds the boot id it was made in; it counts only
  while the host's boot id is the same (``/proc/sys/kernel/random/boot_id`` on Linux, a new
  one at each ``SimulatedHost`` reboot).

The methods block (small file I/O); :meth:`run` is the async wrapper the reconcilers use.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

from node_image.agent.state import StateDir, read_json
from node_image.errors import AgentError
from node_image.host import Host

log = logging.getLogger(__name__)

T = TypeVar("T")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")


class Frequency(StrEnum):
    ONCE = "once"
    PER_BOOT = "boot"


class Markers:
    def __init__(self, state: StateDir, host: Host) -> None:
        self._state = state
        self._host = host
        self.root = state.root / "markers"

    def path(self, name: str, frequency: Frequency) -> Path:
        if not _NAME.match(name):
            raise AgentError(f"marker name {name!r}: letters, digits, '.', '_' and '-' only")
        return self.root / frequency.value / name

    def done(self, name: str, frequency: Frequency) -> bool:
        data = read_json(self.path(name, frequency))
        if not isinstance(data, dict):
            return False
        if frequency is Frequency.PER_BOOT:
            return bool(data.get("boot_id") == self._host.boot_id())
        return True

    def mark(self, name: str, frequency: Frequency) -> None:
        body = {"at": time.time(), "boot_id": self._host.boot_id()}
        self._state.write(self.path(name, frequency), json.dumps(body).encode(), 0o600)
        log.debug("marker %s/%s set", frequency.value, name)

    def clear(self, name: str, frequency: Frequency) -> bool:
        """Forget a marker so its step runs again; False if it was not set."""
        try:
            self.path(name, frequency).unlink()
        except FileNotFoundError:
            return False
        return True

    async def run(
        self, name: str, frequency: Frequency, step: Callable[[], Awaitable[T]]
    ) -> tuple[bool, T | None]:
        """Run ``step`` unless its marker is set; mark it once ``step`` has returned.

        Returns ``(True, result)`` when the step ran, ``(False, None)`` when it was skipped.
        A step that raises leaves no marker and runs again next time.
        """
        if await asyncio.to_thread(self.done, name, frequency):
            return False, None
        result = await step()
        await asyncio.to_thread(self.mark, name, frequency)
        return True, result
