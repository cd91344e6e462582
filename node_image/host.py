"""The Host seam: everything the agent does to the machine goes through a :class:`Host`.

``LinuxHost`` acts on the real machine (root ``/``, real facts). ``SimulatedHost`` keeps a
whole device in a directory: its files under ``<directory>/rootfs/<absolute path>`` and
synthetic but stable facts, so one process can run thousands of real agents.

Both run commands for real (:mod:`node_image.commands`, on ``sh``). Boot control
(:mod:`node_image.boot`): ``LinuxHost`` edits the GRUB environment with ``grub-editenv`` and
reboots with ``systemctl reboot``; ``SimulatedHost`` keeps the block, the slot images and its
boot record in ``<directory>/boot/`` and reboots by choosing a slot as ``grub.cfg`` would.
Either way ``reboot()`` raises :class:`~node_image.boot.RebootRequested`.

Host methods block (file I/O); the agent calls them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import platform
import socket
import stat
import time
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, NoReturn, Protocol, runtime_checkable

from node_image import blockwrite, boot, commands, grubenv
from node_image.agent.state import read_json
from node_image.blockwrite import SlotWrite
from node_image.boot import BootLayout, RebootRequested
from node_image.commands import CommandFailed, CommandResult
from node_image.errors import AgentError
from registration.atomic import atomic_write

if TYPE_CHECKING:
    from registration.protocol import Facts

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

    def resolve(self, path: str) -> Path:
        """Where the device's absolute ``path`` lives on this host (itself on ``LinuxHost``).
        For commands that take paths (the K3s installer's ``INSTALL_K3S_BIN_DIR``)."""
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

    def run(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> CommandResult:
        """Run a command (see :func:`node_image.commands.run`); raises ``CommandError``."""
        ...

    def reboot(self) -> NoReturn:
        """Start a reboot and raise ``RebootRequested``. Flush the outbox before calling."""
        ...

    def kernel_cmdline(self) -> str:
        """The running kernel's command line ("" when there is none to read)."""
        ...

    def set_clock(self, seconds: float) -> None:
        """Set the system clock (``CLOCK_REALTIME``) to ``seconds`` since the epoch."""
        ...

    def set_hostname(self, name: str) -> None:
        """Make ``name`` the machine's hostname, now and after a reboot."""
        ...

    def boot_id(self) -> str:
        """An id that changes on every boot (the kernel's ``boot_id`` on Linux)."""
        ...

    def active_slot(self) -> str:
        """The slot the running system booted from (``A`` or ``B``)."""
        ...

    def inactive_slot(self) -> str:
        """The other slot: the one an update writes."""
        ...

    def read_grubenv(self) -> dict[str, str]:
        """The GRUB environment's variables (empty if there is no block yet)."""
        ...

    def write_grubenv(self, values: Mapping[str, str], unset: Collection[str] = ()) -> None:
        """Set ``values`` and remove ``unset`` in the GRUB environment block."""
        ...

    def write_slot(self, slot: str, chunks: Iterable[bytes]) -> SlotWrite:
        """Stream ``chunks`` into ``slot``, fsync, and return the size and sha256 written."""
        ...

    def read_slot_sha256(self, slot: str, size: int) -> str:
        """The sha256 of the first ``size`` bytes of ``slot``, read back from the disk."""
        ...

    def read_slot_file(self, slot: str, path: str) -> bytes | None:
        """The file at absolute ``path`` inside the root filesystem (squashfs) written to
        ``slot``, or None when the image has no such file."""
        ...


def _device_path(path: str) -> PurePosixPath:
    pure = PurePosixPath(path)
    if not pure.is_absolute() or ".." in pure.parts or str(pure) != path:
        raise AgentError(f"host path {path!r} must be absolute and normalised")
    return pure


class _FileHost:
    """What both hosts do alike: files under a root, commands, slot writes."""

    def __init__(self, root: Path, durable: bool, layout: BootLayout) -> None:
        self._root = root
        self._durable = durable
        self.layout = layout

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

    def run(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> CommandResult:
        return commands.run(argv, env, timeout)

    def active_slot(self) -> str:
        raise NotImplementedError  # each host knows how it booted

    def inactive_slot(self) -> str:
        return boot.other_slot(self.active_slot())

    def write_slot(self, slot: str, chunks: Iterable[bytes]) -> SlotWrite:
        written = blockwrite.write_stream(self.layout.slot(slot), chunks)
        log.info("slot %s: wrote %s bytes, sha256 %s", slot, written.size, written.sha256)
        return written

    def read_slot_sha256(self, slot: str, size: int) -> str:
        return blockwrite.read_back(self.layout.slot(slot), size)

    def read_slot_file(self, slot: str, path: str) -> bytes | None:
        inside = str(_device_path(path)).lstrip("/")
        image = str(self.layout.slot(slot))
        try:
            return self.run(["unsquashfs", "-cat", image, inside], timeout=60).stdout
        except CommandFailed as e:
            if "no matches" in e.stderr_tail:
                return None
            raise


#: Where a real device keeps its grubenv and slots unless told otherwise (the state
#: partition, ext4: GRUB can write its environment there).
DEFAULT_BOOT = Path("/boot/corral")
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
CMDLINE = Path("/proc/cmdline")
REBOOT = ("systemctl", "reboot")


@dataclass(frozen=True)
class Kernel:
    """Where the running kernel says how it booted, and how to reboot it.

    The defaults are the real ones. Tests that simulate a boot (the GRUB decision applied
    by :func:`node_image.boot.choose_slot`) point them at files they write themselves and
    at a reboot command that does nothing, so ``LinuxHost`` itself is what they run.
    """

    cmdline: Path = CMDLINE
    boot_id: Path = BOOT_ID
    reboot: tuple[str, ...] = REBOOT


class LinuxHost(_FileHost):
    """The real machine this process runs on. State writes always fsync.

    ``layout`` says where the GRUB environment block and the slot devices are; the
    grubenv is edited with ``grub-editenv`` (package ``grub-common``).
    """

    def __init__(self, layout: BootLayout | None = None, kernel: Kernel | None = None) -> None:
        super().__init__(Path("/"), durable=True, layout=layout or BootLayout.under(DEFAULT_BOOT))
        self.kernel = kernel or Kernel()

    def collect_facts(self) -> Facts:
        from registration import facts  # pyudev is needed only to register

        return facts.collect()

    def reboot(self) -> NoReturn:
        log.warning("rebooting")
        self.run(self.kernel.reboot, timeout=60)
        raise RebootRequested(None)

    def boot_id(self) -> str:
        return self.kernel.boot_id.read_text().strip()

    def kernel_cmdline(self) -> str:
        try:
            return self.kernel.cmdline.read_text()
        except FileNotFoundError:
            return ""

    def set_clock(self, seconds: float) -> None:
        time.clock_settime(time.CLOCK_REALTIME, seconds)

    def set_hostname(self, name: str) -> None:
        self.write_file("/etc/hostname", f"{name}\n".encode(), 0o644)
        socket.sethostname(name)

    def active_slot(self) -> str:
        """From the kernel command line (``corral.slot=``), else GRUB's good slot, else A."""
        booted = boot.slot_from_cmdline(self.kernel.cmdline.read_text())
        if booted is not None:
            return booted
        good = self.read_grubenv().get(boot.GOOD, "")
        return good if good in boot.SLOTS else boot.SLOTS[0]

    def read_grubenv(self) -> dict[str, str]:
        if not self.layout.grubenv.exists():
            return {}
        listed = self.run(["grub-editenv", str(self.layout.grubenv), "list"], timeout=30)
        found: dict[str, str] = {}
        for line in listed.stdout.decode(errors="replace").splitlines():
            name, sep, value = line.partition("=")
            if sep:
                found[name] = value
        return found

    def write_grubenv(self, values: Mapping[str, str], unset: Collection[str] = ()) -> None:
        path = str(self.layout.grubenv)
        if not self.layout.grubenv.exists():
            self.layout.grubenv.parent.mkdir(parents=True, exist_ok=True)
            self.run(["grub-editenv", path, "create"], timeout=30)
        if unset:
            names = [grubenv.check_name(n) for n in unset]
            self.run(["grub-editenv", path, "unset", *names], timeout=30)
        if values:
            pairs = [f"{grubenv.check_name(k)}={v}" for k, v in values.items()]
            self.run(["grub-editenv", path, "set", *pairs], timeout=30)


MACHINE_FILE = "machine.json"
#: Set in the environment of every command a ``SimulatedHost`` runs: the directory that
#: stands for ``/``. Stand-ins for the edge of the world (the K3s installer, ``k3s``,
#: ``systemctl`` in the tests) take their fixed paths under it.
SIMULATED_ROOT_ENV = "CORRAL_SIMULATED_ROOT"
BOOT_FILE = "boot.json"
#: Where a ``SimulatedHost`` records the clock settings the agent made.
CLOCK_FILE = "clock.json"


class SimulatedHost(_FileHost):
    """A device kept in ``directory``: files under ``rootfs/``, facts in ``machine.json``.

    The facts are synthetic and stable: a DMI product UUID is generated once and stored.
    State writes skip fsync unless ``durable=True``.

    Boot: ``boot/grubenv`` (the same 1,024-byte block GRUB uses), slot images
    ``boot/slots/A`` and ``boot/slots/B``, and ``boot.json``, the record of the current
    boot (slot, boot id, count). :meth:`reboot` makes ``grub.cfg``'s choice
    (:func:`node_image.boot.choose_slot`), saves the decremented counter, records a new boot
    and raises ``RebootRequested(slot)``: whoever runs the agent starts it again on this
    directory, now booted into that slot.
    """

    def __init__(self, directory: Path, durable: bool = False) -> None:
        super().__init__(
            directory / "rootfs", durable=durable, layout=BootLayout.under(directory / "boot")
        )
        self.directory = directory

    @property
    def rootfs(self) -> Path:
        return self._root

    def run(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> CommandResult:
        return commands.run(argv, {SIMULATED_ROOT_ENV: str(self._root), **(env or {})}, timeout)

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

    # --- boot -------------------------------------------------------------------------

    def _boot_record(self) -> dict[str, object]:
        data = read_json(self.directory / BOOT_FILE)
        if isinstance(data, dict) and data.get("slot") in boot.SLOTS:
            return data
        record: dict[str, object] = {
            "slot": boot.SLOTS[0],
            "boot_id": str(uuid.uuid4()),
            "boots": 1,
        }
        self._save_boot(record)
        return record

    def _save_boot(self, record: dict[str, object]) -> None:
        body = json.dumps(record, sort_keys=True).encode()
        atomic_write(self.directory / BOOT_FILE, body, fsync=self._durable)

    def boot_id(self) -> str:
        return str(self._boot_record()["boot_id"])

    def kernel_cmdline(self) -> str:
        """``rootfs/proc/cmdline``, which a test writes to stand for the kernel's."""
        found = self.read_file("/proc/cmdline", 64 * 1024)
        return found.content.decode(errors="replace") if found else ""

    def set_clock(self, seconds: float) -> None:
        """Recorded in ``clock.json`` (every setting, in order): the host's clock is not ours."""
        data = read_json(self.directory / CLOCK_FILE)
        settings = list(data["set"]) if isinstance(data, dict) else []
        body = json.dumps({"set": [*settings, seconds]}).encode()
        atomic_write(self.directory / CLOCK_FILE, body, fsync=self._durable)

    def set_hostname(self, name: str) -> None:
        self.write_file("/etc/hostname", f"{name}\n".encode(), 0o644)

    def boots(self) -> int:
        """How many times this simulated machine has booted."""
        return int(str(self._boot_record()["boots"]))

    def active_slot(self) -> str:
        return str(self._boot_record()["slot"])

    def read_grubenv(self) -> dict[str, str]:
        try:
            return grubenv.parse(self.layout.grubenv.read_bytes())
        except FileNotFoundError:
            return {}

    def write_grubenv(self, values: Mapping[str, str], unset: Collection[str] = ()) -> None:
        try:
            block = self.layout.grubenv.read_bytes()
        except FileNotFoundError:
            block = grubenv.empty()
        for name in unset:
            grubenv.check_name(name)
        # GRUB rewrites the block in place; a rename of a same-size file is as good here.
        atomic_write(
            self.layout.grubenv, grubenv.update(block, values, unset), 0o644, fsync=self._durable
        )

    def reboot(self) -> NoReturn:
        choice = boot.choose_slot(self.read_grubenv())
        if choice.save:
            self.write_grubenv(choice.save)
        record = {"slot": choice.slot, "boot_id": str(uuid.uuid4()), "boots": self.boots() + 1}
        self._save_boot(record)
        log.info("simulated reboot of %s into slot %s", self.directory, choice.slot)
        raise RebootRequested(choice.slot)
