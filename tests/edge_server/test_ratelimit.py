"""The failed-registration limiter keeps its memory bounded under a spray of addresses."""

from __future__ import annotations

import ipaddress
import tracemalloc

import pytest

from edge_server.errors import TooManyRequests
from edge_server.ratelimit import FailureLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fail_until_limited(limiter: FailureLimiter, address: str) -> None:
    for _ in range(limiter.limit):
        limiter.check(address)
        limiter.record_failure(address)
    with pytest.raises(TooManyRequests):
        limiter.check(address)


def test_a_spray_of_200k_addresses_stays_under_the_bound_and_a_hot_address_stays_limited() -> None:
    clock = Clock()
    limiter = FailureLimiter(limit=5, window=60, max_addresses=1000, clock=clock)
    hot = "203.0.113.7"
    fail_until_limited(limiter, hot)
    largest = 0
    grown = 0
    for i in range(200_000):
        if i == 180_000:  # the table is long full; what the last 20k leave is one table's worth
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
        address = f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}"
        limiter.check(address)
        limiter.record_failure(address)
        largest = max(largest, len(limiter))
        if i % 100 == 0:  # the brute-forcing address keeps trying, and keeps being refused
            with pytest.raises(TooManyRequests):
                limiter.check(hot)
        clock.now += 0.0001
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert largest <= 1000
    # ~900 bytes per entry (key, deque of 5 floats, dict slot): 1000 entries, not 20,000
    assert grown < 1000 * 1200, f"the last 20,000 addresses left {grown} bytes allocated"


def test_expired_entries_leave_the_table_and_the_address_may_try_again() -> None:
    clock = Clock()
    limiter = FailureLimiter(limit=3, window=60, max_addresses=100, clock=clock)
    for i in range(50):
        limiter.record_failure(f"192.0.2.{i}")
    fail_until_limited(limiter, "198.51.100.1")
    clock.now += 61
    limiter.check("198.51.100.1")  # its failures aged out: allowed again
    assert len(limiter) == 0


def test_one_ipv6_block_counts_as_one_client() -> None:
    limiter = FailureLimiter(limit=5, max_addresses=100)
    network = ipaddress.IPv6Network("2001:db8:1:2::/64")
    for i in range(5):
        limiter.record_failure(str(network[i * 7919 + 1]))
    assert len(limiter) == 1
    with pytest.raises(TooManyRequests):
        limiter.check(str(network[123_456_789]))
    limiter.check("2001:db8:1:3::1")  # the next /64 is another client
    limiter.check("::ffff:192.0.2.1")
    limiter.record_failure("::ffff:192.0.2.1")
    limiter.check("192.0.2.1")
    assert len(limiter) == 2
