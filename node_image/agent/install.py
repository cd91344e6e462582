"""First boot with ``install_disk`` in the seed: install the live system to that disk, carry
the agent's identity over, and reboot into the installed system.

It runs once the device has registered (so the installed system boots with an identity and
never registers again), only on a live boot (``/run/live/medium`` holds the root image), and
only once: a run-once marker is set after the installer has finished. A run cut short (power,
``kill -9``) leaves the marker unset and the live system as it was; the next start of the
agent installs again from scratch. The state directory, outbox included, is copied onto the
persistent partition and fsynced there before the reboot, so nothing queued is lost.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from node_image import installer
from node_image.agent import seedsource
from node_image.agent.markers import Frequency, Markers
from node_image.agent.state import StateDir
from node_image.host import Host, LinuxHost
from node_image.image import layout

log = logging.getLogger(__name__)

MARKER = "install-disk"


def wanted_disk(seed_path: str | None, medium: Path, host: Host) -> str | None:
    """The seed's ``install_disk`` on a live boot, else None. The seed is found as the first
    boot found it (``--seed auto``, the unit's: the live medium, ``corral.seed=``, a
    ``CORRAL``/``CIDATA`` partition; or an explicit path)."""
    if seed_path is None or not installer.is_live(medium):
        return None
    found = seedsource.find(host, seed_path)
    return found.seed.install_disk if found is not None else None


def manifest_sha256(medium: Path) -> str | None:
    try:
        data = json.loads((medium / layout.OS_MANIFEST_PATH.lstrip("/")).read_bytes())
    except (OSError, ValueError):
        return None
    sha = data.get("sha256") if isinstance(data, dict) else None
    return sha if isinstance(sha, str) else None


def install_if_seeded(
    seed_path: str | None,
    state: StateDir,
    host: Host,
    medium: Path = layout.LIVE_MEDIUM,
    partitions: installer.PartitionMapper = installer.kernel_partitions,
) -> None:
    """Install and reboot (``host.reboot()`` raises ``RebootRequested``) when the seed asks
    for it and it has not been done; otherwise return at once."""
    if not isinstance(host, LinuxHost):
        return
    disk = wanted_disk(seed_path, medium, host)
    if disk is None:
        return
    markers = Markers(state, host)
    if markers.done(MARKER, Frequency.ONCE):
        log.info("already installed to %s; not installing again", disk)
        return
    log.warning("the seed asks to install to %s: installing", disk)
    installer.install(
        Path(disk),
        medium / layout.LIVE_ROOT.lstrip("/"),
        state_dir=state.root,
        partitions=partitions,
        expected_sha256=manifest_sha256(medium),
    )
    markers.mark(MARKER, Frequency.ONCE)
    log.warning("installed to %s: rebooting into the installed system", disk)
    host.reboot()
