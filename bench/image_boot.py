"""Boot-to-registered of the node image under QEMU TCG, with the kernel-to-init time of the
same boot alongside.

One run: the base ISO (``corral image build-base``, from the build cache), a server on
127.0.0.1 (``tests/server_process.py``) reachable from the guest as 10.0.2.2, a token, a
seeded copy, one boot under SeaBIOS from a CD (``-accel tcg -smp 2 -m 1536``). Timed from
QEMU's start:

- baseline: the kernel starting the initramfs (``Run /init as init process`` on the serial
  console): firmware, GRUB, loading and starting the kernel, which the image cannot speed up;
- figure: the device registered (it shows in ``GET /api/v1/devices``), and online (MQTT).

Target (issue 8): boot-to-registered <= 90 s.

Run: ``.venv/bin/python bench/image_boot.py [--no-record] [--note TEXT]`` (root, QEMU).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse  # noqa: E402
import re  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from bench.procstat import CLK_TCK, cpu_seconds, machine_cpu_ticks  # noqa: E402
from bench.report import append_row, git_describe, log, today, verdict  # noqa: E402
from tests.qemu.fleet import build_base_iso, devices, guest_server, guest_url  # noqa: E402
from tests.qemu.machine import Machine  # noqa: E402
from tests.qemu.seeding import seed_document, seed_iso  # noqa: E402
from tests.server_process import Server  # noqa: E402

TARGET_S = 90.0
TIMEOUT_S = 900.0
KERNEL_INIT = re.compile(r"Run /init as init process")
SYSTEMD = re.compile(r"Welcome to .*Debian")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-boot-") as tmp:
        work = Path(tmp)
        log("base ISO (from the build cache)")
        iso, _ = build_base_iso(work / "base.iso")
        server = guest_server(work)
        try:
            token = server.create_token(max_uses=1)["token"]
            seeded = work / "seeded.iso"
            seed_iso(iso, seeded, seed_document(guest_url(server), token))
            times = boot(seeded, work, server)
        finally:
            server.stop_all()
    kernel, systemd, registered, online, load = times
    rev = git_describe()
    ok = registered <= TARGET_S
    line = (
        f"image boot, QEMU TCG SeaBIOS CD ({rev}): registered {registered:.1f} s, online "
        f"{online:.1f} s | baseline kernel-to-init {kernel:.1f} s (systemd at {systemd:.1f} s) | "
        f"ratio {registered / kernel:.1f}x | [registered <= {TARGET_S:.0f} s: {verdict(ok)}]"
    )
    print(line, flush=True)
    if args.no_record:
        log("not recorded (--no-record)")
        return 0
    append_row(
        [
            today(),
            "node image boot to registered, QEMU TCG (bench/image_boot.py)",
            f"registered {registered:.1f} s, online {online:.1f} s after QEMU start",
            f"same boot: kernel runs /init at {kernel:.1f} s; systemd starts at {systemd:.1f} s",
            f"{registered / kernel:.1f}x",
            f"registered <= {TARGET_S:.0f} s: {verdict(ok)}",
            f"SeaBIOS, CD, -smp 2 -m 1536, user-net; other work on the machine during the boot "
            f"{load:.2f} cores; {rev}" + (f"; {args.note}" if args.note else ""),
        ]
    )
    log("appended a row to BENCHMARKS.md")
    return 0


def boot(seeded: Path, work: Path, server: Server) -> tuple[float, float, float, float, float]:
    machine = Machine(
        seeded,
        work / "vm",
        name="bench",
        logs_dir=work.parent / "qemu-logs",
        ports=(server.port, server.mqtt_port),
    )
    marks: dict[str, float] = {}
    busy_before, wall_before = machine_cpu_ticks()[0], time.monotonic()
    with machine:
        assert machine.proc is not None
        qemu_pid = machine.proc.pid
        deadline = time.monotonic() + TIMEOUT_S
        while "online" not in marks:
            if time.monotonic() > deadline or not machine.running():
                raise SystemExit(f"no registration; serial log: {machine.keep_log()}")
            console = machine.console()
            now = machine.elapsed()
            if "kernel" not in marks and KERNEL_INIT.search(console):
                marks["kernel"] = now
            if "systemd" not in marks and SYSTEMD.search(console):
                marks["systemd"] = now
            if "registered" not in marks or "online" not in marks:
                found = devices(server)
                if found and "registered" not in marks:
                    marks["registered"] = now
                    log(f"registered at {now:.1f} s")
                if found and found[0].get("online"):
                    marks["online"] = now
            time.sleep(0.5)
        wall = time.monotonic() - wall_before
        machine_cores = (machine_cpu_ticks()[0] - busy_before) / CLK_TCK / wall
        load = machine_cores - cpu_seconds(qemu_pid) / wall
    return (
        marks.get("kernel", float("nan")),
        marks.get("systemd", float("nan")),
        marks["registered"],
        marks["online"],
        load,
    )


if __name__ == "__main__":
    sys.exit(main())
