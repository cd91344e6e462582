"""What a bench says: progress on stderr, percentiles, and its row in BENCHMARKS.md."""

from __future__ import annotations

import datetime as dt
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"


def log(message: str) -> None:
    """Progress goes to stderr; stdout carries only the result line."""
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISS"


def git_describe() -> str:
    """Short commit of the tree under test, ``+dirty`` when the packages have local edits."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "edge_server", "registration", "node_image"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return (rev or "unknown") + ("+dirty" if dirty else "")


def today() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")


BENCHMARKS_HEADER = """\
# Benchmarks

Measured figures of the real server, one row per full run, newest last. Each bench is a
script in `bench/` that starts `corral serve` (the code of the tree it lives in) in a
subprocess on 127.0.0.1, with a free port and a temporary data directory, and drives it from
separate load-generator processes on the same machine.

How to run (from the repository root, after `make` has set up `.venv`):

    make bench                                          # = .venv/bin/python bench/registration.py
    .venv/bin/python bench/registration.py --quick      # smoke run (~15 s), not recorded
    .venv/bin/python bench/registration.py --no-record  # full run (~1-2 min), not recorded
    .venv/bin/pip install py-spy                        # once, for --profile
    .venv/bin/python bench/registration.py --profile /tmp/prof   # + flame graphs of the server

A full run prints one result line on stdout (progress on stderr) and appends a row below.
Run benches on an otherwise idle machine: each phase waits for quiet and re-runs if other
work took CPU meanwhile, and a row whose figures were still disturbed says DISTURBED.
Figures drift by 10-30 % run to run on a shared VM; compare ratios (each against a baseline
measured in the same run) rather than absolute rates across machines. The load generator
shares the cores with the server, so notes also give the server's own CPU per request (ms of
CPU), which does not depend on how much CPU the generator took.

| date | benchmark | figure | baseline | ratio | target | notes |
| --- | --- | --- | --- | --- | --- | --- |
"""


def append_row(cells: Sequence[str], path: Path = BENCHMARKS_MD) -> None:
    """Append one table row (the header first if the file is new). O_APPEND, never a
    rewrite: other benches may append at the same time."""
    row = "| " + " | ".join(c.replace("|", "/").replace("\n", " ") for c in cells) + " |\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if os.fstat(fd).st_size == 0:
            os.write(fd, BENCHMARKS_HEADER.encode())
        else:
            with path.open("rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    os.write(fd, b"\n")
        os.write(fd, row.encode())
    finally:
        os.close(fd)
