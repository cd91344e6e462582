"""Keeping the long-running agent small (issue 6: an idle agent within 40 MB resident).

- :func:`release` gives freed memory back to the system. CPython frees objects into the C
  allocator, and glibc keeps what it was given: without it the heap stays as large as the
  busiest moment (startup, a spec pull, a reconcile pass) for the life of the process.
  ``malloc_trim(0)`` returns the free pages of every arena. Elsewhere (musl, macOS) there is
  no such call and it does nothing.
"""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Callable


def _find_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


_trim = _find_trim()


def release() -> None:
    """Collect garbage and return the allocator's free memory to the system (a few ms:
    call it when work is done, not in a loop)."""
    gc.collect()  # cyclic garbage first: an arena of it left alone is never given back
    if _trim is not None:
        _trim(0)
