"""Failure rate limiting per client address, so registration secrets cannot be guessed.

Memory stays bounded whatever the number of source addresses: the table holds at most
``max_addresses`` entries, each with at most ``limit`` timestamps. Entries are kept in order
of their last activity (a failure, or an attempt refused while limited), so expired ones are
dropped from the front as new ones arrive, and when the table is full of live entries the
one idle longest makes room: an address that keeps trying stays limited. IPv6 clients are
counted per /64, the block one host usually holds, so spraying from one block of addresses
does not escape the limit or fill the table.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from edge_server.errors import TooManyRequests

MAX_ADDRESSES = 10_000


def client_key(address: str) -> str:
    """The address as counted: IPv4 as is (IPv4-mapped IPv6 too), IPv6 by its /64."""
    if ":" not in address:
        return address  # IPv4 (or "unknown"): as the transport gave it
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class FailureLimiter:
    """Allows at most ``limit`` failures per ``window`` seconds from one address; past that,
    every attempt from the address is refused until old failures age out."""

    def __init__(
        self,
        limit: int,
        window: float = 60.0,
        max_addresses: int = MAX_ADDRESSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self.max_addresses = max_addresses
        self._clock = clock
        # address -> its last ``limit`` failure times; least recently active first
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._failures)

    def _expire(self, now: float) -> None:
        while self._failures:
            address, failures = next(iter(self._failures.items()))
            if failures[-1] > now - self.window:
                return  # entries behind it may have expired too: they go when they reach here
            del self._failures[address]

    def check(self, address: str) -> None:
        now = self._clock()
        self._expire(now)
        key = client_key(address)
        failures = self._failures.get(key)
        if failures is None or len(failures) < self.limit:
            return
        if failures[0] <= now - self.window:
            return
        self._failures.move_to_end(key)
        retry = int(failures[0] + self.window - now) + 1
        raise TooManyRequests(
            f"more than {self.limit} failed registrations in {int(self.window)}s from "
            f"{key}; retry in {retry}s",
            code="rate_limited",
        )

    def record_failure(self, address: str) -> None:
        now = self._clock()
        self._expire(now)
        key = client_key(address)
        failures = self._failures.get(key)
        if failures is None:
            while len(self._failures) >= self.max_addresses:
                self._failures.popitem(last=False)
            failures = self._failures[key] = deque(maxlen=self.limit)
        else:
            self._failures.move_to_end(key)
        failures.append(now)
