"""The Host seam: everything the agent does to the machine goes through a :class:`Host`.

``LinuxHost`` acts on the real machine (root ``/``, real facts). ``SimulatedHost`` keeps a
whole device in a directory: its files under ``<directory>/rootfs/<absolute path>`` and
synthetic but stable facts, so one process can run thousands of real agents.

Host methods block (file I/O); the agent calls them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import platform
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from registration.protocol import Facts

from node_image.agent.state import read_json
from node_image.errors import AgentError
from registration.atomic import atomic_write

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HostFile:
    """A regular file as found on the host."""

    content: bytes
    mode: int


@runtime_checkable
class Host(Protocol):
    """What the agent may do to the machine it manages."""

    @property
    def durable(self) -> bool:
        """Whether state writes must reach the disk (fsync) before they count."""
        ...

    def collect_facts(self) -> Facts:
        """The hardware facts reported at registration."""
        ...

    def read_file(self, path: str, limit: int) -> HostFile | None:
        """The regular file at absolute ``path``, or None if there is none.

        At most ``limit + 1`` bytes are read, so a caller comparing contents sees a longer
        file differ without reading all of it. Raises OSError when the path exists but is
        not a readable regular file.
        """
        ...

    def write_file(self, path: str, content: bytes, mode: int) -> None:
        """Atomically replace the file at absolute ``path``, creating parent directories."""
        ...

    def remove_file(self, path: str) -> bool:
        """Remove the file at absolute ``path``; False if it was already gone."""
        ...


def _device_path(path: str) -> PurePosixPath:
    pure = PurePosixPath(path)
    if not pure.is_absolute() or ".." in pure.parts or str(pure) != path:
        raise AgentError(f"host path {path!r} must be absolute and normalised")
    return pure


class _FileHost:
    """File operations on a root directory; the two hosts differ only in root and facts."""

    def __init__(self, root: Path, durable: bool) -> None:
        self._root = root
        self._durable = durable

    @property
    def durable(self) -> bool:
        return self._durable

    def resolve(self, path: str) -> Path:
        """Where the device's absolute ``path`` lives on this host."""
        pure = _device_path(path)
        return self._root.joinpath(*pure.parts[1:])

    def read_file(self, path: str, limit: int) -> HostFile | None:
        target = self.resolve(path)
        try:
            # O_NONBLOCK: a FIFO planted at the path must not hang the agent.
            fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, "not a regular file", str(target))
            content = f.read(limit + 1)
        return HostFile(content=content, mode=stat.S_IMODE(st.st_mode))

    def write_file(self, path: str, content: bytes, mode: int) -> None:
        atomic_write(self.resolve(path), content, mode, fsync=self._durable)

    def remove_file(self, path: str) -> bool:
        try:
            self.resolve(path).unlink()
        except FileNotFoundError:
            return False
        return True


class LinuxHost(_FileHost):
    """The real machine this process runs on. State writes always fsync."""

    def __init__(self) -> None:
        super().__init__(Path("/"), durable=True)

    def collect_facts(self) -> Facts:
        from registration import facts  # pyudev is needed only to register

        return facts.collect()


MACHINE_FILE = "machine.json"


class SimulatedHost(_FileHost):
    """A device kept in ``directory``: files under ``rootfs/``, facts in ``machine.json``.

    The facts are synthetic and stable: a DMI product UUID is generated once and stored.
    State writes skip fsync unless ``durable=True``.
    """

    def __init__(self, directory: Path, durable: bool = False) -> None:
        super().__init__(directory / "rootfs", durable=durable)
        self.directory = directory

    @property
    def rootfs(self) -> Path:
        return self._root

    def machine_uuid(self) -> str:
        """This simulated machine's DMI product UUID, created on first use."""
        path = self.directory / MACHINE_FILE
        data = read_json(path)
        if isinstance(data, dict) and isinstance(data.get("product_uuid"), str):
            return str(data["product_uuid"])
        product_uuid = str(uuid.uuid4())
        body = json.dumps({"product_uuid": product_uuid}).encode()
        atomic_write(path, body, fsync=self._durable)
        log.debug("simulated machine %s created in %s", product_uuid, self.directory)
        return product_uuid

    def collect_facts(self) -> Facts:
        product_uuid = self.machine_uuid()
        short = product_uuid.replace("-", "")
        mac = "02:" + ":".join(short[i : i + 2] for i in range(0, 10, 2))
        from registration.protocol import Cpu, Facts, Memory, Nic

        return Facts(
            hostname=f"sim-{short[:8]}",
            dmi={
                "product_uuid": product_uuid,
                "product_name": "Corral Simulated Device",
                "sys_vendor": "Corral",
            },
            cpu=Cpu(model="Corral Simulated CPU", count=2),
            memory=Memory(total_bytes=2 * 1024**3),
            nics=[Nic(name="eth0", mac=mac)],
            kernel="simulated",
            arch=platform.machine(),
        )
