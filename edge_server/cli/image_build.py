"""``corral image build-base``: the bootable base ISO and the OS update artifact.

Runs locally (root, Debian's image tools); no server is involved. Each stage prints a line
as it starts and its time as it ends; stages whose inputs have not changed come from the
cache (``~/.cache/corral``, or ``CORRAL_CACHE_DIR``), so an unchanged rebuild takes seconds.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import Any

from edge_server.cli import output
from edge_server.cli.errors import CliError
from node_image.errors import AgentError
from node_image.image.build import BuildOptions, StepReport, build_base

#: What each stage does, for the progress display.
STEP_TITLES = {
    "rootfs": "Debian root and venv (mmdebstrap, pip)",
    "root": "agent wheel, overlay, root squashfs",
    "iso": "hybrid ISO (grub-mkrescue)",
    "outputs": "copying the outputs",
}


def add_parsers(verbs: Any, common: argparse.ArgumentParser) -> None:
    p = verbs.add_parser(
        "build-base",
        parents=[common],
        help="build the base ISO and the OS update image (local, needs root)",
        description=(
            "Build the hybrid base ISO (BIOS and UEFI, CD or USB) and, beside it, the OS "
            "update artifact: <stem>.os.squashfs and its manifest <stem>.os.json "
            "(import it with `corral artifact import --kind os-image`)."
        ),
    )
    p.add_argument("--out", required=True, type=Path, help="the ISO to write, e.g. base.iso")
    p.add_argument("--os-version", help="the OS version (default: <package version>+<hash>)")
    p.add_argument(
        "--overlay", type=Path, help="files copied into the root (default build/overlay)"
    )
    p.add_argument("--cache-dir", type=Path, help="the build cache (default ~/.cache/corral)")
    p.set_defaults(func=run, local=True)


def run(args: argparse.Namespace) -> int:
    if args.overlay is not None and not args.overlay.is_dir():
        raise CliError(f"--overlay {args.overlay}: not a directory")
    options = BuildOptions(
        out=args.out.resolve(),
        os_version=args.os_version,
        overlay=args.overlay.resolve() if args.overlay else None,
        cache_dir=args.cache_dir.resolve() if args.cache_dir else None,
    )
    display = StepDisplay()
    started = time.monotonic()
    # SIGTERM unwinds like Ctrl-C, so the chroot's mounts are undone on the way out.
    signal.signal(signal.SIGTERM, _terminated)
    try:
        result = build_base(options, display.on_step)
    except AgentError as e:
        display.fail()
        raise CliError(str(e).splitlines()[0], hint=_hint(str(e))) from e
    total = time.monotonic() - started
    print(f"{result.iso}  {output.size(result.iso_size)}  ({result.iso_size} bytes)")
    print(f"{result.os_image}  {output.size(result.os_image.stat().st_size)}  {result.version}")
    print(f"{result.os_manifest}")
    cached = sum(1 for s in result.steps if s.cached)
    print(f"built in {_seconds(total)} ({cached} of {len(result.steps) - 1} stages from cache)")
    return 0


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _hint(message: str) -> str | None:
    lines = message.splitlines()
    return lines[-1] if len(lines) > 1 and lines[-1].startswith("(log:") else None


class StepDisplay:
    """``[1/4] Debian root and venv …`` then ``done in 1m54s`` or ``cached``, on stderr."""

    def __init__(self) -> None:
        self.index = 0
        self.current: str | None = None
        self.tty = sys.stderr.isatty()

    def on_step(self, name: str, done: StepReport | None) -> None:
        if done is None:
            self.index += 1
            self.current = name
            title = STEP_TITLES.get(name, name)
            end = "" if self.tty else "\n"
            sys.stderr.write(f"[{self.index}/{len(STEP_TITLES)}] {title} …{end}")
        else:
            what = "cached" if done.cached else "done"
            prefix = " " if self.tty else f"[{self.index}/{len(STEP_TITLES)}] {name}: "
            sys.stderr.write(f"{prefix}{what} in {_seconds(done.seconds)}\n")
            self.current = None
        sys.stderr.flush()

    def fail(self) -> None:
        if self.current is not None and self.tty:
            sys.stderr.write(" failed\n")
            sys.stderr.flush()


def _seconds(s: float) -> str:
    if s < 60:
        return f"{s:.1f}s"
    return f"{int(s // 60)}m{int(s % 60):02d}s"
