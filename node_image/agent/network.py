"""A static address from the seed (``seed.network``), applied before registering.

It becomes a systemd-networkd file matching the seed's interface names or globs; networkd
is then told to reload. Without ``network`` in the seed the image's DHCP setup stays.
"""

from __future__ import annotations

import logging

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
