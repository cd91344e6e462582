"""Boot control: the A/B slots, the boot counter in the GRUB environment, and reboots.

The GRUB environment carries three variables (``grub.cfg`` reads and decrements them before
the kernel starts, so a kernel that never comes up still uses a try):

- ``corral_slot``: the slot known to be good, booted by default;
- ``corral_next``: a slot to try, while ``corral_tries`` is above zero;
- ``corral_tries``: tries left; each boot of ``corral_next`` takes one.

The agent sets ``corral_next``/``corral_tries`` after writing and verifying the inactive slot
(:func:`try_next`), reboots, and after its health check makes the booted slot the good one
(:func:`mark_good`). :func:`choose_slot` is the decision ``grub.cfg`` makes; ``SimulatedHost``
runs it on its simulated reboot, so the simulator exercises the same counter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from node_image.errors import AgentError

if TYPE_CHECKING:
    from node_image.host import Host

SLOTS = ("A", "B")
GOOD = "corral_slot"
NEXT = "corral_next"
TRIES = "corral_tries"
#: The kernel command line names the booted slot: ``corral.slot=B`` (set by ``grub.cfg``).
CMDLINE_KEY = "corral.slot"
#: GRUB has no arithmetic: the installed grub.cfg decrements the counter through a table
#: that stops at 9 (build/overlay/usr/share/corral/grub/installed.cfg).
MAX_TRIES = 9


class RebootRequested(BaseException):  # noqa: N818 - a request, like SystemExit
    """The host is rebooting: the agent must stop acting and exit (or, simulated, restart).

    A ``BaseException`` like ``SystemExit``, so the agent's ``except Exception`` guards around
    reconcilers do not swallow it. ``slot`` is the slot the machine boots next, when known.
    """

    def __init__(self, slot: str | None) -> None:
        self.slot = slot
        super().__init__(f"reboot requested (next slot {slot or 'chosen by GRUB'})")


@dataclass(frozen=True)
class BootLayout:
    """Where the GRUB environment block and the slots live (files or block devices)."""

    grubenv: Path
    slots: Mapping[str, Path] = field(default_factory=dict)

    @classmethod
    def under(cls, root: Path) -> BootLayout:
        """``root/grubenv`` and slot images ``root/slots/A`` and ``root/slots/B``."""
        return cls(root / "grubenv", {s: root / "slots" / s for s in SLOTS})

    def slot(self, name: str) -> Path:
        check_slot(name)
        try:
            return self.slots[name]
        except KeyError as e:
            raise AgentError(f"no device or file is configured for slot {name}") from e


def check_slot(name: str) -> str:
    if name not in SLOTS:
        raise AgentError(f"unknown slot {name!r}; slots are {', '.join(SLOTS)}")
    return name


def other_slot(name: str) -> str:
    return SLOTS[1 - SLOTS.index(check_slot(name))]


def slot_from_cmdline(cmdline: str) -> str | None:
    for word in cmdline.split():
        key, _, value = word.partition("=")
        if key == CMDLINE_KEY and value in SLOTS:
            return value
    return None


@dataclass(frozen=True)
class BootChoice:
    slot: str
    #: Variables GRUB saves before booting (the decremented counter).
    save: Mapping[str, str]


def choose_slot(env: Mapping[str, str]) -> BootChoice:
    """What ``grub.cfg`` does: try ``corral_next`` while tries remain, else the good slot."""
    good = env.get(GOOD, SLOTS[0])
    good = good if good in SLOTS else SLOTS[0]
    candidate = env.get(NEXT, "")
    try:
        tries = int(env.get(TRIES, "0"))
    except ValueError:
        tries = 0
    if candidate in SLOTS and candidate != good and tries > 0:
        return BootChoice(candidate, {TRIES: str(tries - 1)})
    return BootChoice(good, {})


def try_next(host: Host, slot: str, tries: int) -> None:
    """Boot ``slot`` next, at most ``tries`` times before GRUB falls back to the good slot."""
    if not 1 <= tries <= MAX_TRIES:
        raise AgentError(f"a slot to try needs 1 to {MAX_TRIES} tries, not {tries}")
    host.write_grubenv({NEXT: check_slot(slot), TRIES: str(tries)})


def mark_good(host: Host, slot: str) -> None:
    """Make ``slot`` the default and forget any pending try."""
    host.write_grubenv({GOOD: check_slot(slot)}, unset=(NEXT, TRIES))
