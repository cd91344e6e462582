"""``corral image devices`` and ``corral image flash IMAGE [--device DEV] [--yes]``.

Both run locally (no server). ``devices`` lists the disks an image may be flashed to (with
``--all``, every disk and why it is not one). ``flash`` offers those candidates unless a
device is named, confirms with the device's model, size and serial, writes with a progress
bar, verifies and prints the sha256. The checks and the writer live in
``node_image/image/candidates.py`` and ``node_image/image/flash.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from edge_server.cli import output
from edge_server.cli.errors import CliError
from edge_server.cli.output import Column
from edge_server.cli.progress import Progress
from node_image.errors import AgentError
from node_image.image import candidates, flash
from node_image.image.candidates import BlockDevice
from node_image.image.system_disks import read_system_disks

COLUMNS: list[Column] = [
    ("device", lambda d: d["device"]),
    ("model", lambda d: d["model"]),
    ("size", lambda d: output.size(d["size"])),
    ("serial", lambda d: d["serial"]),
    ("bus", lambda d: d["bus"]),
]
WHY_NOT: Column = ("why not", lambda d: "; ".join(d["refused"]) or "candidate")


def add_parsers(verbs: Any, common: argparse.ArgumentParser) -> None:
    p = verbs.add_parser(
        "devices", parents=[common], help="list the disks an image can be flashed to"
    )
    p.add_argument("--all", action="store_true", help="every disk, and why it is not a candidate")
    p.add_argument("--image", type=Path, help="leave out disks smaller than this image")
    p.set_defaults(func=cmd_devices, local=True)
    f = verbs.add_parser(
        "flash", help="write an image to a USB stick (or a named disk), then verify it"
    )
    f.add_argument("image", type=Path, help="the image to write (an ISO from 'image seed')")
    f.add_argument("--device", help="the whole disk to write (default: choose from candidates)")
    f.add_argument("-y", "--yes", action="store_true", help="write without asking")
    f.set_defaults(func=cmd_flash, local=True)


def _row(device: BlockDevice, refused: list[str]) -> dict[str, Any]:
    return {
        "device": device.node,
        "model": device.model,
        "size": device.size_bytes,
        "serial": device.serial,
        "bus": device.bus,
        "removable": device.removable,
        "refused": refused,
    }


def cmd_devices(args: argparse.Namespace) -> int:
    size = _image_size(args.image) if args.image else None
    system = read_system_disks()
    rows = [_row(d, candidates.refusals(d, system, size)) for d in candidates.list_devices()]
    if not args.all:
        rows = [r for r in rows if not r["refused"]]
    columns = COLUMNS + [WHY_NOT] if args.all else COLUMNS
    if not rows and args.output != "json":
        sys.stderr.write(
            "no candidate disk (plug in a USB stick; 'corral image devices --all' says why "
            "each disk is not one)\n"
            if not args.all
            else "no disks\n"
        )
        return 0
    output.emit(rows, args.output, columns)
    return 0


def describe(device: BlockDevice) -> str:
    """``/dev/sdb: SanDisk Cruzer, 14.9 GiB, serial 4C5300…``: what the operator confirms."""
    model = device.model or "unknown model"
    size = output.size(device.size_bytes)
    return f"{device.node}: {model}, {size}, serial {device.serial or '-'}"


def _image_size(image: Path) -> int:
    try:
        return flash.image_size(image)
    except AgentError as e:
        raise CliError(str(e)) from e


def _interactive() -> bool:
    return sys.stdin.isatty() and sys.stderr.isatty()


def _ask(question: str) -> str:
    sys.stderr.write(question)
    sys.stderr.flush()
    return sys.stdin.readline().strip()


def _choose(size: int, yes: bool) -> str:
    """The candidate to write to when no --device was given."""
    system = read_system_disks()
    found = [d for d in candidates.list_devices() if not candidates.refusals(d, system, size)]
    if not found:
        raise CliError(
            "no removable or USB disk large enough for the image was found",
            hint="plug in a USB stick, or see 'corral image devices --all'",
        )
    if len(found) == 1 and (yes or not _interactive()):
        if not yes:
            _refuse_without_tty()
        return found[0].node
    if not _interactive():
        raise CliError(
            f"{len(found)} candidate disks; name one with --device",
            hint="corral image devices",
        )
    for i, device in enumerate(found, 1):
        sys.stderr.write(f"  {i}) {describe(device)}\n")
    answer = _ask(f"Write to which disk [1-{len(found)}]? ")
    if not answer.isdigit() or not 1 <= int(answer) <= len(found):
        raise CliError("no disk chosen; nothing written")
    return found[int(answer) - 1].node


def _refuse_without_tty() -> None:
    raise CliError(
        "not asking for confirmation without a terminal; nothing written",
        hint="add --yes to write without asking",
    )


def cmd_flash(args: argparse.Namespace) -> int:
    image: Path = args.image
    size = _image_size(image)
    target = args.device or _choose(size, args.yes)
    try:
        device = flash.check_target(target, size, explicit=bool(args.device))
    except AgentError as e:
        raise CliError(str(e), hint="corral image devices --all") from e
    if not args.yes:
        if not _interactive():
            _refuse_without_tty()
        answer = _ask(
            f"Write {image} ({output.size(size)}) to {describe(device)}?\n"
            "Everything on it will be lost. Type 'yes' to write: "
        )
        if answer.lower() not in ("y", "yes"):
            raise CliError("not confirmed; nothing written")
    writing = Progress(f"writing {device.node}", size)
    verifying = Progress(f"verifying {device.node}", size)

    def on_verify(n: int) -> None:
        if verifying.done == 0:
            writing.close()
        verifying.advance(n)

    try:
        result = flash.flash(image, device.node, on_write=writing.advance, on_verify=on_verify)
    except flash.FlashRefused as e:
        raise CliError(str(e), hint="corral image devices --all") from e
    except AgentError as e:
        raise CliError(str(e)) from e
    finally:
        (verifying if verifying.done else writing).close()
    rate = result.size / max(result.write_seconds, 1e-9)
    sys.stderr.write(
        f"wrote {output.size(result.size)} to {result.device} in {result.write_seconds:.1f} s "
        f"({output.size(int(rate))}/s), verified in {result.verify_seconds:.1f} s\n"
    )
    sys.stdout.write(f"sha256 {result.sha256}  {result.device}\n")
    return 0
