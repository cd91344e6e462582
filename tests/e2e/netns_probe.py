"""The probes a network-fault lab's hosts run inside their namespaces (``tests/e2e/netns.py``):

    python -I netns_probe.py ping DST COUNT INTERVAL TIMEOUT
    python -I netns_probe.py tcp-probe ADDR PORT TIMEOUT WAIT

Run as a script with ``-I`` (isolated: not this tree's packages), so it needs only the
standard library. ``ping`` sends raw ICMP echo requests and prints ping's summary line;
``tcp-probe`` prints ``ok``, ``timeout``, ``refused``, ``unreachable`` or ``error:ERRNO``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import struct
import sys
import time
from pathlib import Path


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(int(word) for word in struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _echo_request(ident: int, seq: int) -> bytes:
    payload = b"corral-netns-lab" + struct.pack("!d", time.time())
    header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    return struct.pack("!BBHHH", 8, 0, _checksum(header + payload), ident, seq) + payload


def _icmp_ping(destination: str, count: int, interval: float, timeout: float) -> tuple[int, int]:
    """Send ``count`` echo requests ``interval`` s apart; wait ``timeout`` s after the last."""
    ident = os.getpid() & 0xFFFF
    replies: set[int] = set()
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        sock.setblocking(False)
        next_send = time.monotonic()
        end = float("inf")
        while True:
            now = time.monotonic()
            if sent < count and now >= next_send:
                # EPERM (nftables dropped it on output) and the like: sent, and lost.
                with contextlib.suppress(OSError):
                    sock.sendto(_echo_request(ident, sent), (destination, 0))
                sent += 1
                next_send += interval
                if sent == count:
                    end = time.monotonic() + timeout
                continue
            if sent == count and (len(replies) == count or now >= end):
                return sent, len(replies)
            wait = (next_send if sent < count else end) - now
            readable, _, _ = select.select([sock], [], [], max(0.0, wait))
            while readable:
                try:
                    packet = sock.recv(65535)
                except BlockingIOError:
                    break
                icmp = packet[(packet[0] & 0x0F) * 4 :]
                if len(icmp) >= 8:
                    kind, _code, _sum, rid, seq = struct.unpack("!BBHHH", icmp[:8])
                    if kind == 0 and rid == ident and seq < count:
                        replies.add(seq)


def _tcp_probe(address: str, port: int, timeout: float) -> str:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return "ok"
    except TimeoutError:
        return "timeout"
    except ConnectionRefusedError:
        return "refused"
    except OSError as err:
        if err.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return "unreachable"
        return f"error:{errno.errorcode.get(err.errno or 0, err.errno)}"


def _main(argv: list[str]) -> int:
    if argv and argv[0] == "ping" and len(argv) == 5:
        sent, received = _icmp_ping(argv[1], int(argv[2]), float(argv[3]), float(argv[4]))
        loss = round(100 * (sent - received) / sent) if sent else 100
        print(f"{sent} packets transmitted, {received} received, {loss}% packet loss")
        return 0 if received == sent else 1
    if argv and argv[0] == "tcp-probe" and len(argv) == 5:
        address, port, timeout, wait = argv[1], int(argv[2]), float(argv[3]), float(argv[4])
        deadline = time.monotonic() + wait
        while True:
            started = time.monotonic()
            outcome = _tcp_probe(address, port, timeout)
            if outcome == "ok" or time.monotonic() >= deadline:
                print(outcome)
                return 0
            time.sleep(max(0.0, min(0.1, started + 0.1 - time.monotonic())))
    print(f"usage: {Path(__file__).name} ping DST COUNT INTERVAL TIMEOUT", file=sys.stderr)
    print(f"       {Path(__file__).name} tcp-probe ADDR PORT TIMEOUT WAIT", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
