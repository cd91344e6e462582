"""Seeding a base ISO (``corral image seed``'s work: find the slot, copy, pwrite, fsync,
rename) against ``cp`` of the same ISO (plus ``sync`` of the copy, so both are durable), in
the same run; and the server's on-the-fly substitution against a plain read of the file.

Uses the base ISO ``corral image build-base`` cached under ~/.cache/corral when there is one,
else makes a ~240 MB ISO with grub-mkrescue and a filler file. Target: seeding <= 1.5x cp,
or <= 2 s.

    .venv/bin/python bench/seed_image.py [--rounds 5] [--no-record] [--note TEXT]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import append_row, git_describe, log, median, today, verdict  # noqa: E402
from node_image.image import seedslot  # noqa: E402
from registration import seed as seed_doc  # noqa: E402
from registration import tokens  # noqa: E402
from tests.node_image.seed_iso import make_iso  # noqa: E402

CACHE = Path.home() / ".cache" / "corral"
TARGET_RATIO = 1.5
TARGET_SECONDS = 2.0
FILLER = 240 * 1000 * 1000


def find_base(workdir: Path) -> tuple[Path, str]:
    """The cached base ISO with a seed slot, newest first; else a made one."""
    for iso in sorted(CACHE.rglob("*.iso"), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            seedslot.find_slot(iso)
        except seedslot.SeedSlotError as e:
            log(f"skipping {iso}: {e}")
            continue
        return iso, f"cached base ISO {iso.name}"
    log("no cached base ISO; making one with grub-mkrescue and a filler file")
    return make_iso(workdir, filler_bytes=FILLER), "grub-mkrescue ISO + filler"


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def cp_and_sync(base: Path, copy: Path) -> None:
    subprocess.run(["cp", str(base), str(copy)], check=True)
    subprocess.run(["sync", str(copy)], check=True)  # fsync of the copy, as seeding does


def read_all(base: Path) -> None:
    with base.open("rb") as f:
        while f.read(seedslot.CHUNK):
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="seed-bench-", dir=ROOT) as tmp:
        work = Path(tmp)
        base, source = find_base(work)
        size = base.stat().st_size
        log(f"base {base} ({size / 1e6:.0f} MB): {source}")
        seed = seed_doc.Seed(server="https://corral.example:8443", token=tokens.generate("ab" * 32))
        slot = seedslot.render(seed)
        offset, _ = seedslot.find_slot(base)
        read_all(base)  # both start from a warm page cache

        cp_times, seed_times, find_times, read_times, stream_times = [], [], [], [], []
        for n in range(args.rounds):
            copy, seeded = work / "cp.iso", work / "seeded.iso"
            cp_times.append(timed(partial(cp_and_sync, base, copy)))
            seed_times.append(timed(partial(seedslot.seed_image, base, seeded, slot)))
            find_times.append(timed(lambda: seedslot.find_slot(base)))
            read_times.append(timed(lambda: read_all(base)))
            stream_times.append(
                timed(lambda: sum(len(c) for c in seedslot.stream(base, offset, slot)))
            )
            copy.unlink()
            seeded.unlink()
            log(f"round {n + 1}: cp+sync {cp_times[-1]:.2f} s, seed {seed_times[-1]:.2f} s")

    cp_s, seed_s = median(cp_times), median(seed_times)
    ratio = seed_s / cp_s
    ok = ratio <= TARGET_RATIO or seed_s <= TARGET_SECONDS
    stream_ratio = median(stream_times) / median(read_times)
    rev = git_describe()
    line = (
        f"seed image ({size / 1e6:.0f} MB, {rev}): seed {seed_s:.2f} s "
        f"(find slot {median(find_times):.2f} s) | cp+sync {cp_s:.2f} s | ratio {ratio:.2f}x | "
        f"stream {median(stream_times):.2f} s vs read {median(read_times):.2f} s "
        f"({stream_ratio:.2f}x) | [<= {TARGET_RATIO}x cp or <= {TARGET_SECONDS:.0f} s: "
        f"{verdict(ok)}]"
    )
    print(line, flush=True)
    if args.no_record:
        log("not recorded (--no-record)")
        return 0
    append_row(
        [
            today(),
            f"seed a {size / 1e6:.0f} MB base ISO, median of {args.rounds} (bench/seed_image.py)",
            f"{seed_s:.2f} s (find slot {median(find_times):.2f} s, copy, pwrite, fsync, rename)",
            f"`cp` + `sync` of the same ISO {cp_s:.2f} s",
            f"{ratio:.2f}x",
            f"<= {TARGET_RATIO}x cp or <= {TARGET_SECONDS:.0f} s: {verdict(ok)}",
            f"{source}; server-side stream with the slot substituted "
            f"{median(stream_times):.2f} s vs plain read {median(read_times):.2f} s "
            f"({stream_ratio:.2f}x), warm page cache; {rev}"
            + (f"; {args.note}" if args.note else ""),
        ]
    )
    log("appended a row to BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
