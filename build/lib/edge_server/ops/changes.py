"""What an operation returns: its result and the changes the notifier acts on."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from edge_server.specs import Change

T = TypeVar("T")


@dataclass(frozen=True)
class Actor:
    """Who made a change, as the audit log names it: an operator's username,
    ``token:<id>`` for a registration, ``device:<id>`` for a device, ``system``."""

    name: str

    @classmethod
    def device(cls, device_id: str) -> Actor:
        return cls(f"device:{device_id}")


SYSTEM = Actor("system")


@dataclass(frozen=True)
class Event:
    """One committed change, for live views (the dashboard's server-sent events)."""

    kind: str  # "device.delete", "group.update", "device.status", ...
    target: str
    actor: str
    at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Changes:
    """The side effects a commit calls for.

    ``nudges``: devices whose spec generation (or acknowledged status seq) they must learn;
    ``revoked``: devices whose certificates were revoked (CRL rewrite, live session ended);
    ``events``: what happened, for subscribers.
    """

    nudges: tuple[Change, ...] = ()
    revoked: tuple[str, ...] = ()
    events: tuple[Event, ...] = ()

    @classmethod
    def of(
        cls,
        *events: Event,
        nudges: Iterable[Change] = (),
        revoked: Iterable[str] = (),
    ) -> Changes:
        return cls(tuple(nudges), tuple(revoked), events)

    def __bool__(self) -> bool:
        return bool(self.nudges or self.revoked or self.events)


NOTHING = Changes()


@dataclass(frozen=True)
class Done(Generic[T]):
    """An operation's answer: ``value`` for the caller, ``changes`` for the notifier."""

    value: T
    changes: Changes = NOTHING
