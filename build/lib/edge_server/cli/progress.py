"""A progress line for long transfers, on stderr, only when stderr is a terminal."""

from __future__ import annotations

import sys
import time
from typing import BinaryIO

from edge_server.cli import output


class Progress:
    """``label  42%  42.0 MiB/100.0 MiB  35.1 MiB/s``, redrawn at most five times a second."""

    def __init__(self, label: str, total: int, enabled: bool | None = None) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._start = time.monotonic()
        self._drawn = 0.0

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and (now - self._drawn >= 0.2 or self.done >= self.total):
            self._drawn = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        percent = 100 * self.done // self.total if self.total else 100
        rate = self.done / max(now - self._start, 1e-6)
        sys.stderr.write(
            f"\r{self.label}  {percent:3d}%  {output.size(self.done)}/{output.size(self.total)}"
            f"  {output.size(int(rate))}/s\033[K"
        )
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


class ProgressReader:
    """A file read for an upload, advancing ``progress`` with each block sent."""

    def __init__(self, stream: BinaryIO, progress: Progress) -> None:
        self._stream = stream
        self.progress = progress

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        self.progress.advance(len(data))
        return data

    def __len__(self) -> int:
        return self.progress.total
