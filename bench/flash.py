"""Flashing: ``corral image flash`` (verify included) to a loop device, against
``dd if=IMAGE of=DEV bs=4M oflag=direct`` to the same device, in the same run.

1. setup, not timed: an image of ``--size-mb`` random bytes and a backing file a little larger,
   attached with ``losetup --direct-io=on`` so writes to the loop device reach the backing
   file's disk directly (as they reach a USB stick), not the host's page cache: dd's writes
   and ours then land in the same place, and ``fsync`` is not a cost dd skips;
2. ``--rounds`` rounds, each after waiting for the machine to be quiet, the order alternating:
   dd; the same dd with ``conv=fsync``; dd reading it back (``iflag=direct``); the flash
   (``node_image.image.flash.flash``: the candidate check, the O_DIRECT write and fsync,
   then the O_DIRECT read-back and sha256 verification), its write and verify phases timed
   apart;
3. medians of each. The ratio is the median over rounds of dd's time over the write phase's
   (the two ran back to back, so a round's load weighs on both; target >= 0.9x); the speed
   with verification included is reported next to it.

Run: ``.venv/bin/python bench/flash.py`` (256 MB, 7 rounds); ``--quick`` = 32 MB, 2 rounds,
not recorded. Needs root (losetup).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from bench.procstat import wait_quiet  # noqa: E402
from bench.report import append_row, git_describe, log, median, today, verdict  # noqa: E402
from node_image.image import flash  # noqa: E402

MB = 1_000_000
TARGET = 0.9


def make_image(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 8 << 20)
            f.write(os.urandom(n))
            left -= n


def timed_dd(image: Path, device: str, *extra: str) -> float:
    argv = ["dd", f"if={image}", f"of={device}", "bs=4M", "oflag=direct", *extra]
    started = time.monotonic()
    subprocess.run(argv, check=True, capture_output=True)
    return time.monotonic() - started


def timed_dd_read(device: str, size: int) -> float:
    """The read-back baseline: dd reading the image's length from the device, O_DIRECT."""
    argv = ["dd", f"if={device}", "of=/dev/null", "bs=4M", "iflag=direct", f"count={size >> 22}"]
    started = time.monotonic()
    subprocess.run(argv, check=True, capture_output=True)
    return time.monotonic() - started


def quiet() -> float:
    return wait_quiet(lambda: [], max_wait=10.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="32 MB, 2 rounds, not recorded")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.size_mb, args.rounds, args.no_record = 32, 2, True
    size = args.size_mb * (1 << 20)
    scratch = Path(tempfile.mkdtemp(prefix="corral-bench-flash-"))
    device = ""
    try:
        image, backing = scratch / "image.iso", scratch / "stick.img"
        log(f"making a {args.size_mb} MiB image and a backing file in {scratch}")
        make_image(image, size)
        with open(backing, "wb") as f:
            f.truncate(size + (16 << 20))
        device = subprocess.run(
            ["losetup", "--find", "--show", "--direct-io=on", str(backing)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        dio = Path(f"/sys/block/{Path(device).name}/loop/dio").read_text().strip()
        dd, dd_fsync, dd_read, write, check, others = [], [], [], [], [], []
        sha256 = ""
        for round_ in range(args.rounds):
            steps = ["dd", "flash"] if round_ % 2 == 0 else ["flash", "dd"]
            for step in steps:
                others.append(quiet())
                if step == "dd":
                    dd.append(timed_dd(image, device))
                    dd_fsync.append(timed_dd(image, device, "conv=fsync"))
                    dd_read.append(timed_dd_read(device, size))
                else:
                    result = flash.flash(
                        image, device, on_write=lambda n: None, on_verify=lambda n: None
                    )
                    write.append(result.write_seconds)
                    check.append(result.verify_seconds)
                    sha256 = result.sha256
            log(
                f"round {round_ + 1}: dd {dd[-1]:.2f} s (fsync {dd_fsync[-1]:.2f} s, "
                f"read {dd_read[-1]:.2f} s), "
                f"flash write {write[-1]:.2f} s + verify {check[-1]:.2f} s"
            )
    finally:
        if device:
            subprocess.run(["losetup", "--detach", device], check=False)
        shutil.rmtree(scratch, ignore_errors=True)

    def rate(seconds: float) -> float:
        return float(size / seconds / MB)

    dd_s, write_s = median(dd), median(write)
    total_s = median([w + c for w, c in zip(write, check, strict=True)])
    ratio = median([d / w for d, w in zip(dd, write, strict=True)])
    total_ratio = median([d / (w + c) for d, w, c in zip(dd, write, check, strict=True)])
    load = os.getloadavg()[0]
    figure = (
        f"write {rate(write_s):.0f} MB/s ({write_s:.2f} s); verify included "
        f"{rate(total_s):.0f} MB/s ({total_s:.2f} s)"
    )
    baseline = f"dd bs=4M oflag=direct {rate(dd_s):.0f} MB/s ({dd_s:.2f} s)"
    ratios = f"{ratio:.2f}x (verify included {total_ratio:.2f}x)"
    line = (
        f"flash {args.size_mb} MiB to {device}: {figure}; {baseline}; {ratios}; "
        f"target write >= {TARGET}x dd: {verdict(ratio >= TARGET)}"
    )
    print(line)
    if not args.no_record:
        notes = (
            f"medians of {args.rounds} rounds, order alternating, ratios paired per round "
            f"(ratio of the medians {rate(write_s) / rate(dd_s):.2f}x); loop device with direct-io="
            f"{'on' if dio == '1' else 'off'} on a file in {tempfile.gettempdir()}; dd with "
            f"conv=fsync {rate(median(dd_fsync)):.0f} MB/s; verify {rate(median(check)):.0f} MB/s"
            f" against dd iflag=direct reading {rate(median(dd_read)):.0f} MB/s (O_DIRECT "
            "read-back hashed while the image file is hashed in another thread); "
            f"sha256 {sha256[:16]}… matched; other work's CPU before rounds max "
            f"{max(others):.2f} cores; load average {load:.1f} at the end (2 shared cores); "
            f"{git_describe()}"
        )
        append_row(
            [
                today(),
                f"flash to a loop device, {args.size_mb} MiB, verify included (bench/flash.py)",
                figure,
                baseline,
                ratios,
                f"write >= {TARGET}x dd: {verdict(ratio >= TARGET)}",
                notes,
            ]
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
