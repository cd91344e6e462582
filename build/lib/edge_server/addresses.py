"""Listen addresses: wildcards, the address to connect to, and the names a certificate covers.

The server's HTTPS listener, its embedded broker and a Mosquitto configured by
``corral broker mosquitto-config`` all answer the same question here.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable

#: Hosts that mean "every interface" when listening.
WILDCARDS = frozenset({"", "0.0.0.0", "::"})  # noqa: S104 - comparing, not binding


def is_wildcard(host: str) -> bool:
    return host in WILDCARDS


def connect_host(host: str) -> str:
    """The host to put in a URL that reaches a local listener on ``host``: loopback for a
    wildcard, brackets around an IPv6 address."""
    if is_wildcard(host):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def server_names(listen_host: str, extra: Iterable[str] = ()) -> list[str]:
    """Names and addresses a certificate for a listener on ``listen_host`` should cover:
    loopback, this machine's hostname, the listen address unless it is a wildcard, and
    ``extra`` (operator-given names), without duplicates."""
    names = ["localhost", "127.0.0.1", "::1", socket.gethostname()]
    if not is_wildcard(listen_host):
        names.append(listen_host)
    names.extend(extra)
    return list(dict.fromkeys(n for n in names if n))
