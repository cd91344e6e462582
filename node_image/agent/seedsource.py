"""Where a blank device finds its seed at first boot, in order:

1. an explicit ``--seed PATH``, when that file exists;
2. ``corral.seed=PATH`` on the kernel command line;
3. the live boot medium: ``/run/live/medium/corral/seed.json`` (the seeded ISO's slot);
4. a partition whose filesystem label is ``CORRAL`` or ``CIDATA`` (a USB stick, a
   cloud-init NoCloud disk), with ``seed.json`` at its root: found with ``blkid`` (no udev
   needed), mounted read-only on a temporary directory, read, unmounted.

An unseeded slot (``{}`` and padding) counts as no seed. :func:`wait_for_seed` looks again
with backoff until one turns up (a USB stick may be plugged in later), saying once, in one
line, what it is waiting for: under systemd the agent waits instead of crash-looping.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from node_image.agent import seed as seed_mod
from node_image.agent.transport import Backoff
from node_image.commands import CommandError, CommandFailed
from node_image.errors import AgentError
from node_image.host import Host
from node_image.image.layout import LIVE_MEDIUM, SEED_CMDLINE_KEY, SEED_LABELS, SEED_PATH
from registration.seed import MAX_SEED_BYTES, Seed, is_blank

log = logging.getLogger(__name__)

#: What ``--seed`` takes to mean "look everywhere".
AUTO = "auto"
#: The seed file's name at the root of a ``CORRAL``/``CIDATA`` partition.
PARTITION_SEED = "seed.json"


@dataclass(frozen=True)
class Found:
    seed: Seed
    where: str


def cmdline_seed_path(cmdline: str) -> str | None:
    """The path of ``corral.seed=PATH`` on a kernel command line (the last one wins)."""
    found = None
    for word in cmdline.split():
        key, sep, value = word.partition("=")
        if sep and key == SEED_CMDLINE_KEY and value:
            found = value
    return found


def _read(host: Host, path: str) -> bytes | None:
    try:
        found = host.read_file(path, MAX_SEED_BYTES)
    except (OSError, AgentError) as e:
        log.info("seed %s not readable: %s", path, e)
        return None
    return found.content if found is not None else None


def labelled_devices(host: Host, label: str) -> list[str]:
    """Block devices whose filesystem label is ``label`` (``blkid``, no cache, no udev)."""
    argv = ["blkid", "-c", "/dev/null", "-t", f"LABEL={label}", "-o", "device"]
    try:
        listed = host.run(argv, {}, 60)
    except CommandError as e:
        if not (isinstance(e, CommandFailed) and e.exit_code == 2):  # 2: nothing matched
            log.info("no partitions labelled %s looked for: %s", label, e)
        return []
    return [line for line in listed.stdout.decode(errors="replace").split() if line]


def read_partition_seed(host: Host, device: str) -> bytes | None:
    """``seed.json`` at the root of ``device``, mounted read-only for the read."""
    with tempfile.TemporaryDirectory(prefix="corral-seed-") as mountpoint:
        try:
            host.run(["mount", "-o", "ro,nodev,nosuid,noexec", device, mountpoint], {}, 60)
        except CommandError as e:
            log.info("seed partition %s not mounted: %s", device, e)
            return None
        try:
            with (Path(mountpoint) / PARTITION_SEED).open("rb") as f:
                return f.read(MAX_SEED_BYTES + 1)
        except FileNotFoundError:
            return None
        finally:
            try:
                host.run(["umount", mountpoint], {}, 60)
            except CommandError as e:
                log.warning("seed partition %s left mounted: %s", device, e)


def candidates(host: Host, explicit: str | None, partitions: bool) -> Iterator[tuple[str, bytes]]:
    """(where, raw bytes) of every seed found, in the order they are preferred."""
    if explicit and explicit != AUTO:
        # A path of the machine running the agent (a simulated host's too), as given.
        try:
            with open(explicit, "rb") as f:  # noqa: PTH123 - a path as given on the command line
                yield explicit, f.read(MAX_SEED_BYTES + 1)
        except FileNotFoundError:
            log.debug("seed %s not there; looking elsewhere", explicit)
    on_cmdline = cmdline_seed_path(host.kernel_cmdline())
    if on_cmdline is not None:
        raw = _read(host, on_cmdline)
        if raw is not None:
            yield f"{on_cmdline} ({SEED_CMDLINE_KEY}=)", raw
    live = str(LIVE_MEDIUM) + SEED_PATH
    raw = _read(host, live)
    if raw is not None:
        yield live, raw
    if not partitions:
        return
    for label in SEED_LABELS:
        for device in labelled_devices(host, label):
            raw = read_partition_seed(host, device)
            if raw is not None:
                yield f"{device} (label {label}):/{PARTITION_SEED}", raw


def find(host: Host, explicit: str | None = AUTO, partitions: bool = True) -> Found | None:
    """The first usable seed, or None. A malformed one is logged and passed over."""
    for where, raw in candidates(host, explicit, partitions):
        if is_blank(raw):
            log.debug("seed %s is blank (an unseeded image)", where)
            continue
        try:
            return Found(seed_mod.parse(raw, where), where)
        except AgentError as e:
            log.warning("%s", e)
    return None


def wait_for_seed(
    host: Host,
    explicit: str | None = AUTO,
    partitions: bool = True,
    backoff: Backoff | None = None,
    stop: threading.Event | None = None,
) -> Found | None:
    """Look until a seed is found; None when ``stop`` is set first."""
    backoff = backoff or Backoff(5.0, 60.0)
    stop = stop or threading.Event()
    said = False
    while not stop.is_set():
        found = find(host, explicit, partitions)
        if found is not None:
            log.info("seed found: %s", found.where)
            return found
        delay = backoff.next()
        if not said:
            labels = "/".join(SEED_LABELS)
            log.warning(
                "no seed: this image is not seeded (looked for %s, %s=, %s%s and a %s "
                "partition); waiting for one, looking again every %.0fs or so",
                explicit if explicit and explicit != AUTO else "no --seed file",
                SEED_CMDLINE_KEY,
                LIVE_MEDIUM,
                SEED_PATH,
                labels,
                delay,
            )
            said = True
        stop.wait(delay)
    return None
