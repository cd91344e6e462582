"""py-spy on a running process: record while a block runs, and read the hot functions back."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

BIN = Path(sys.executable).parent


def start_py_spy(
    pid: int, out: Path, threads: bool = False, native: bool = False
) -> subprocess.Popen[bytes]:
    """Record ``pid`` with py-spy until :func:`stop_py_spy`: ``.txt`` = collapsed stacks
    (``--format raw``), else a flame graph. Python frames only, sampled without pausing the
    process; ``native`` adds C/Rust frames (OpenSSL, SQLite, cryptography) but pauses the
    process at every sample and counts threads waiting in C (on the GIL, on a queue) as busy,
    so use it for where native time goes, not for shares of CPU. It takes py-spy about half
    a second to attach."""
    cmd = [str(BIN / "py-spy"), "record", "--pid", str(pid), "--rate", "100"]
    cmd += ["--output", str(out), "--format", "raw" if out.suffix == ".txt" else "flamegraph"]
    cmd += ["--native"] if native else ["--nonblocking"]
    if threads:
        cmd.append("--threads")
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_py_spy(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None:
        return
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def py_spy(pid: int, out: Path | None, native: bool = False) -> Iterator[None]:
    """With ``out``, record ``pid`` while the block runs (see :func:`start_py_spy`)."""
    if out is None:
        yield
        return
    proc = start_py_spy(pid, out, native=native)
    try:
        time.sleep(0.5)  # attach before the load starts
        yield
    finally:
        stop_py_spy(proc)


def top_functions(
    collapsed: Path, n: int = 12, own: bool = True, by_function: bool = False
) -> list[tuple[str, float]]:
    """From py-spy's collapsed stacks: the functions with the largest share of samples, by
    self time (``own``) or inclusive time; ``by_function`` merges a function's lines."""
    totals: dict[str, int] = {}
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        frames = stack.split(";")
        if by_function:
            frames = [
                f.split(" (", 1)[0] + " (" + f.split(" (", 1)[-1].split(":")[0] + ")"
                if " (" in f
                else f
                for f in frames
            ]
        if own:
            totals[frames[-1]] = totals.get(frames[-1], 0) + count
        else:
            for frame in set(frames):
                totals[frame] = totals.get(frame, 0) + count
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])[:n]
    return [(name, count / samples * 100 if samples else 0.0) for name, count in ranked]
