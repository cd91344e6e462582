"""Base ISO size and build times: ``corral image build-base`` cold and cached.

1. cached: a build with the default cache (``~/.cache/corral``) after one has filled it
   (the first, untimed run fills it when it is empty);
2. cold (``--cold``): a build into an empty cache directory of its own (mmdebstrap, pip,
   squashfs: several minutes). Without ``--cold`` the row carries ``--cold-seconds`` when
   given (a cold build observed earlier, noted as such).

The baseline is ``cp`` of the built ISO in the same run: a cached rebuild cannot be faster
than copying its output. Targets (issue 8): ISO <= 250 MB; an unchanged rebuild takes
seconds.

Run: ``.venv/bin/python bench/image_build.py [--cold] [--no-record] [--note TEXT]`` (root).
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

from bench.report import append_row, git_describe, log, today, verdict  # noqa: E402
from tests.server_process import CORRAL, tree_env  # noqa: E402

TARGET_MB = 250
TARGET_CACHED_S = 10.0


def build(out: Path, cache_dir: Path | None = None) -> tuple[float, str]:
    env = tree_env()
    if cache_dir is not None:
        env["CORRAL_CACHE_DIR"] = str(cache_dir)
    start = time.monotonic()
    done = subprocess.run(
        [*CORRAL, "image", "build-base", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=3600,
    )
    seconds = time.monotonic() - start
    if done.returncode != 0:
        raise SystemExit(f"build-base failed: {done.stderr.strip()}")
    return seconds, done.stderr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold", action="store_true", help="also build into an empty cache")
    parser.add_argument("--cold-seconds", type=float, help="a cold build time observed earlier")
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-image-") as tmp:
        work = Path(tmp)
        log("first build (fills the cache when it is empty; not timed)")
        build(work / "warm.iso")
        log("cached build")
        cached, steps = build(work / "base.iso")
        iso = work / "base.iso"
        size = iso.stat().st_size
        start = time.monotonic()
        shutil.copyfile(iso, work / "copy.iso")
        os.sync()
        copy_s = time.monotonic() - start
        cold: float | None = args.cold_seconds
        cold_note = "observed earlier" if cold is not None else "not measured"
        if args.cold:
            log("cold build into an empty cache (minutes)")
            cold_cache = work / "cold-cache"
            cold, _ = build(work / "cold.iso", cold_cache)
            cold_note = "measured in this run, empty cache"
            shutil.rmtree(cold_cache, ignore_errors=True)
    size_mb = size / 1e6
    rev = git_describe()
    size_ok = size_mb <= TARGET_MB
    cached_ok = cached <= TARGET_CACHED_S
    cold_text = f"{cold:.0f} s ({cold_note})" if cold is not None else "cold: not measured"
    step_text = "; ".join(line.strip() for line in steps.splitlines() if "in " in line)
    line = (
        f"image build ({rev}): ISO {size_mb:.1f} MB | cached rebuild {cached:.1f} s | "
        f"cold {cold_text} | baseline cp {copy_s:.1f} s | ratio {cached / copy_s:.1f}x | "
        f"[<= {TARGET_MB} MB: {verdict(size_ok)}; cached <= {TARGET_CACHED_S:.0f} s: "
        f"{verdict(cached_ok)}]"
    )
    print(line, flush=True)
    if args.no_record:
        log("not recorded (--no-record)")
        return 0
    append_row(
        [
            today(),
            "base ISO, `corral image build-base` (bench/image_build.py)",
            f"ISO {size_mb:.1f} MB ({size} bytes); cached rebuild {cached:.1f} s; cold {cold_text}",
            f"cp of the ISO {copy_s:.1f} s",
            f"cached {cached / copy_s:.1f}x cp",
            f"<= {TARGET_MB} MB: {verdict(size_ok)}; cached <= {TARGET_CACHED_S:.0f} s: "
            f"{verdict(cached_ok)}",
            f"cached steps: {step_text}; {rev}" + (f"; {args.note}" if args.note else ""),
        ]
    )
    log("appended a row to BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
