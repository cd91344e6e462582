"""A QEMU virtual machine for the image tests: TCG (no KVM here), user-mode networking, the
serial console in a file.

The guest reaches the host's 127.0.0.1 through 10.0.2.2, QEMU user-net's gateway address
(checked in the facts file): a server bound to loopback is reachable as
``https://10.0.2.2:<port>`` once its certificate names that address.

:class:`Machine` is a context manager: on leaving it QEMU is killed and its temp files go;
the serial log is kept (copied under ``qemu-logs/``) when the block failed, and its path
is added to the failure message.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal

from tests.waiting import wait_until

#: Where the guest reaches the test server: an address of QEMU's user-mode network whose
#: ports are forwarded (``guestfwd``) to the same ports on the host's 127.0.0.1.
HOST_FROM_GUEST = "10.0.2.100"
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
#: The DMI product name QEMU's default PC machine reports (i440FX).
QEMU_PRODUCT_NAME = "Standard PC (i440FX + PIIX, 1996)"


def user_net(ports: Sequence[int]) -> str:
    """QEMU's user-mode network, restricted: the guest gets DHCP and reaches nothing but
    ``HOST_FROM_GUEST:<port>`` for ``ports``, each connection relayed by ``socat`` to that
    port on 127.0.0.1 (no NTP, DNS or anything else leaves the machine)."""
    forwards = "".join(
        f",guestfwd=tcp:{HOST_FROM_GUEST}:{p}-cmd:socat - TCP:127.0.0.1:{p}" for p in ports
    )
    return f"user,model=e1000,restrict=on{forwards}"


Firmware = Literal["bios", "uefi"]
Medium = Literal["cdrom", "disk", "usb"]


@dataclass
class Machine:
    """One boot of ``image`` as a CD or as a USB-style raw disk, under SeaBIOS or OVMF."""

    image: Path
    workdir: Path
    firmware: Firmware = "bios"
    medium: Medium = "cdrom"
    memory_mb: int = 1536
    cpus: int = 2
    extra_disk_mb: int | None = None
    rtc_base: str | None = None
    #: Host loopback ports the guest may reach at ``HOST_FROM_GUEST`` (the server's).
    ports: tuple[int, ...] = ()
    name: str = "vm"
    logs_dir: Path | None = None  # where a failed boot's serial log is kept
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    kept_log: Path | None = field(default=None, init=False)

    @property
    def serial_log(self) -> Path:
        return self.workdir / f"{self.name}-serial.log"

    @property
    def extra_disk(self) -> Path:
        return self.workdir / f"{self.name}-disk.raw"

    def argv(self) -> list[str]:
        argv = ["qemu-system-x86_64", "-accel", "tcg", "-smp", str(self.cpus)]
        argv += ["-m", str(self.memory_mb), "-nographic", "-monitor", "none"]
        argv += ["-serial", f"file:{self.serial_log}", "-no-reboot"]
        argv += ["-nic", user_net(self.ports)]
        if self.firmware == "uefi":
            vars_copy = self.workdir / f"{self.name}-OVMF_VARS.fd"
            shutil.copyfile(OVMF_VARS, vars_copy)
            argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"]
            argv += ["-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}"]
        if self.medium == "cdrom":
            argv += ["-drive", f"file={self.image},media=cdrom,readonly=on,if=ide,index=2"]
            argv += ["-boot", "order=d"]
        elif self.medium == "usb":
            # A USB stick on an xHCI controller: the hybrid ISO's bytes as `dd` writes them.
            # The guest's writes go to a temp overlay (snapshot=on): the image never changes.
            argv += ["-device", "qemu-xhci,id=xhci"]
            argv += ["-drive", f"file={self.image},format=raw,if=none,id=stick,snapshot=on"]
            argv += ["-device", "usb-storage,bus=xhci.0,drive=stick,bootindex=0"]
        else:
            # The hybrid ISO's bytes as a raw (SATA-style) disk, as `dd` writes them; the
            # guest's writes go to a temp overlay (snapshot=on).
            argv += ["-drive", f"file={self.image},format=raw,if=ide,index=0,snapshot=on"]
            argv += ["-boot", "order=c"]
        if self.extra_disk_mb is not None:
            with open(self.extra_disk, "wb") as f:
                f.truncate(self.extra_disk_mb * 1024 * 1024)
            argv += ["-drive", f"file={self.extra_disk},format=raw,if=virtio"]
        if self.rtc_base is not None:
            argv += ["-rtc", f"base={self.rtc_base}"]
        return argv

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.serial_log.write_bytes(b"")
        argv = self.argv()
        (self.workdir / f"{self.name}-argv.txt").write_text(" ".join(argv) + "\n")
        self.started_at = time.monotonic()
        with open(self.workdir / f"{self.name}-qemu.out", "wb") as out:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def elapsed(self) -> float:
        return time.monotonic() - self.started_at

    def console(self) -> str:
        try:
            return self.serial_log.read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_console(self, pattern: str, timeout: float) -> float:
        """Until ``pattern`` (a regex) shows on the serial console; the seconds since start."""
        regex = re.compile(pattern)

        def seen() -> bool:
            if not self.running():
                raise AssertionError(f"QEMU exited (code {self.exit_code()}) before {pattern!r}")
            return regex.search(self.console()) is not None

        wait_until(f"{pattern!r} on the serial console", seen, timeout, interval=0.5)
        return self.elapsed()

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self) -> None:
        """Kill QEMU (its whole session) and reap it."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=30)

    def keep_log(self) -> Path | None:
        """Copy the serial log under ``logs_dir`` and return where it went."""
        if self.logs_dir is None or not self.serial_log.exists():
            return None
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        dest = self.logs_dir / f"{self.workdir.parent.name}-{self.name}-serial.log"
        shutil.copyfile(self.serial_log, dest)
        self.kept_log = dest
        return dest

    def cleanup(self) -> None:
        for path in self.workdir.glob(f"{self.name}-*"):
            if path.suffix in (".raw", ".fd"):
                path.unlink(missing_ok=True)

    def __enter__(self) -> Machine:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        try:
            if exc is not None:
                kept = self.keep_log()
                tail = self.console()[-3000:]
                where = f"serial console log kept at {kept}" if kept else "no serial log kept"
                exc.add_note(f"{where}; its end:\n{tail}")
        finally:
            self.cleanup()
