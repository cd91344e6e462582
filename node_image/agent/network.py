"""The network before registering: a static address from the seed (``seed.network``), and
a wait for a route to the server.

The static address becomes a systemd-networkd file matching the seed's interface names or
globs; networkd is then told to reload. Without ``network`` in the seed the image's DHCP
setup stays.

The agent starts without waiting for ``network-online.target``: it loads what it needs while
DHCP runs, then waits here for a route to the server (a lookup, no packet sent) rather than
fail its first attempts and back off: before registering for as long as it takes, and before
the daemon's first contact for up to ``ROUTE_WAIT`` (longer than DHCP takes; the daemon copes
without a network, retrying with backoff).
"""

from __future__ import annotations

import logging
import socket
import time
from urllib.parse import urlsplit

from node_image.commands import CommandError
from node_image.host import Host
from registration.seed import Network

log = logging.getLogger(__name__)

#: Sorts before the image's DHCP ``.network`` files, so networkd picks it for these links.
NETWORK_FILE = "/etc/systemd/network/10-corral-static.network"
RELOAD = ("networkctl", "reload")


def render(network: Network) -> bytes:
    """The systemd-networkd file for ``network``."""
    lines = [
        "# Written by corral-agent from the seed's static network settings.",
        "[Match]",
        f"Name={network.interface}",
        "",
        "[Network]",
        f"Address={network.address}",
    ]
    if network.gateway is not None:
        lines.append(f"Gateway={network.gateway}")
    lines.extend(f"DNS={dns}" for dns in network.dns)
    return ("\n".join(lines) + "\n").encode()


def apply(host: Host, network: Network) -> bool:
    """Write the file (when it differs) and reload networkd; True if anything changed."""
    content = render(network)
    current = host.read_file(NETWORK_FILE, len(content))
    if current is not None and current.content == content:
        return False
    host.write_file(NETWORK_FILE, content, 0o644)
    log.info(
        "static network %s on %s written to %s", network.address, network.interface, NETWORK_FILE
    )
    try:
        host.run(RELOAD, {}, 60)
    except CommandError as e:
        # networkd not running yet (or at all): it reads the file when it starts.
        log.warning("static network written, but networkd not reloaded: %s", e)
    return True


#: How often :func:`wait_for_route` looks again, and how often it says it is still waiting.
ROUTE_POLL = 0.25
ROUTE_LOG_EVERY = 300.0
#: How long a registered agent waits for a route before its daemon starts anyway.
ROUTE_WAIT = 30.0


def no_route(url: str) -> str | None:
    """Why this machine cannot reach the host of ``url`` yet (no address for its name, no
    route), or None when it can try. A UDP ``connect`` looks the route up and sends nothing."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 443
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as e:
        return f"{host} does not resolve: {e.strerror}"
    reason = f"{host}: no address"
    for family, kind, proto, _, address in found:
        with socket.socket(family, kind, proto) as probe:
            try:
                probe.connect(address)
            except OSError as e:
                reason = f"no route to {address[0]}: {e.strerror}"
                continue
        return None
    return reason


def wait_for_route(url: str, limit: float | None = None) -> bool:
    """Return once the server of ``url`` is routable (True), saying so when it had to wait,
    or after ``limit`` seconds without (False)."""
    started = logged = time.monotonic()
    reason = no_route(url)
    if reason is None:
        return True
    log.info("waiting for the network (%s)", reason)
    while reason is not None:
        now = time.monotonic()
        if limit is not None and now - started >= limit:
            log.info("no network after %.0fs (%s): going on without", now - started, reason)
            return False
        if now - logged >= ROUTE_LOG_EVERY:
            logged = now
            log.info("still waiting for the network (%s)", reason)
        time.sleep(ROUTE_POLL)
        reason = no_route(url)
    log.info("network up after %.1fs", time.monotonic() - started)
    return True
