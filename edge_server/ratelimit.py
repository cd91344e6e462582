"""Failure rate limiting per client address, so registration secrets cannot be guessed."""

from __future__ import annotations

import time
from collections import deque

from edge_server.errors import TooManyRequests


class FailureLimiter:
    """Allows at most ``limit`` failures per ``window`` seconds from one address; past that,
    every attempt from the address is refused until old failures age out."""

    def __init__(self, limit: int, window: float = 60.0) -> None:
        self.limit = limit
        self.window = window
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, address: str, now: float) -> deque[float]:
        failures = self._failures.setdefault(address, deque())
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        return failures

    def check(self, address: str) -> None:
        now = time.monotonic()
        failures = self._recent(address, now)
        if len(failures) >= self.limit:
            retry = int(failures[0] + self.window - now) + 1
            raise TooManyRequests(
                f"more than {self.limit} failed registrations in {int(self.window)}s from "
                f"{address}; retry in {retry}s",
                code="rate_limited",
            )
        if not failures:
            self._failures.pop(address, None)

    def record_failure(self, address: str) -> None:
        self._recent(address, time.monotonic()).append(time.monotonic())
