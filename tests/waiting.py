"""Waiting for something to become true: one poll loop for tests and benches."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def wait_until(
    what: str,
    check: Callable[[], T],
    timeout: float = 30,
    interval: float = 0.1,
    detail: Callable[[], Any] | None = None,
) -> T:
    """Call ``check`` every ``interval`` s until it returns a true value, and return that.
    After ``timeout`` s fail with ``what`` (and ``detail()``, if given, to say how far it got)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            seen = f": {detail()}" if detail is not None else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}{seen}")
        time.sleep(interval)


async def wait_for(
    what: str, check: Callable[[], T], seconds: float = 30, interval: float = 0.1
) -> T:
    """:func:`wait_until` from async code: the (blocking) checks run in a thread."""
    return await asyncio.to_thread(wait_until, what, check, seconds, interval)


def wait_listening(
    port: int, alive: Callable[[], bool], timeout: float, why: Callable[[], str] = str
) -> None:
    """Until something accepts TCP connections on 127.0.0.1:``port``. Fails at once when
    ``alive()`` says the process that should listen has exited; ``why()`` (its log) is added
    to the error."""

    def accepts() -> bool:
        if not alive():
            raise RuntimeError(f"process exited before listening on {port}:\n{why()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    try:
        wait_until(f"127.0.0.1:{port} to listen", accepts, timeout, interval=0.02)
    except AssertionError as e:
        raise RuntimeError(f"{e}:\n{why()[-3000:]}") from e
