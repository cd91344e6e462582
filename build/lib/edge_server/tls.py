"""TLS memory per connection.

asyncio's ``SSLProtocol`` gives every TLS connection a 256 KiB receive buffer
(``max_size``). With a fleet's HTTPS and embedded-broker connections open at once that is
most of the server's memory: 10,000 devices cost ~3 GiB (bench/reconnect_storm.py). One TLS
record is at most 16 KiB of ciphertext plus a header, and a smaller buffer only means more,
smaller reads, so the server uses 16 KiB.
"""

from __future__ import annotations

import asyncio.sslproto

TLS_READ_BUFFER = 16 * 1024 + 512


def limit_tls_buffers() -> None:
    """Applies to every asyncio TLS connection of this process made from now on."""
    asyncio.sslproto.SSLProtocol.max_size = TLS_READ_BUFFER
