"""Keeping the long-running agent small (issue 6: an idle agent within 40 MB resident).

- :func:`release` gives freed memory back to the system. CPython frees objects into the C
  allocator, and glibc keeps what it was given: without it the heap stays as large as the
  busiest moment (startup, a spec pull, a reconcile pass) for the life of the process.
  ``malloc_trim(0)`` returns the free pages of every arena. Elsewhere (musl, macOS) there is
  no such call and it does nothing.
- :func:`without_pydantic_plugins` spares the agent pydantic's plugin lookup. Before building
  its first validator, pydantic imports ``importlib.metadata`` (with ``zipfile``, ``csv``,
  ``email.message`` …) and reads the entry points of every installed distribution, to find
  plugins the agent never has: about 0.6 MB that would stay resident for months.
"""

from __future__ import annotations

import ctypes
import gc
import sys
import types
from collections.abc import Callable, Iterable

#: The pydantic module that looks plugins up (pydantic 2: ``get_plugins()``).
PLUGIN_LOADER = "pydantic.plugin._loader"


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


def _no_plugins() -> Iterable[object]:
    return ()


def without_pydantic_plugins() -> None:
    """From now on pydantic finds no plugins, without looking. Call before the first model
    is validated (the wire documents defer building their validators to first use)."""
    if PLUGIN_LOADER in sys.modules:
        return  # already looked: nothing left to spare
    loader = types.ModuleType(PLUGIN_LOADER, "pydantic plugins: none in the agent")
    loader.get_plugins = _no_plugins  # type: ignore[attr-defined]
    sys.modules[PLUGIN_LOADER] = loader
