"""The durable outbox of status events.

Every status event gets the next sequence number and is written to ``outbox.json`` (atomic:
temp file, fsync, rename) before anyone sends it. Events leave the outbox only when the
server acknowledges them: ``StatusAck.acked_seq`` over HTTP, ``Nudge.acked_seq`` over MQTT.

Sequence numbers are never reused, across restarts and ``kill -9`` alike: the file keeps
``next_seq`` with the events in one atomic write. The server applies ``seq == last + 1``
only, so the outbox never drops an unacknowledged event.

The methods block (file I/O) and are thread-safe; the agent calls them through
``asyncio.to_thread``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from node_image.agent.state import atomic_write, read_json, remove_stale_temps
from node_image.errors import AgentError
from registration.desired import Condition, StatusEvent
from registration.document import ValidationError

log = logging.getLogger(__name__)

FORMAT = 1


class OutboxError(AgentError):
    """The outbox file exists but cannot be understood."""


@dataclass(frozen=True)
class AckResult:
    removed: int
    #: The server acknowledged a sequence number this outbox never assigned (its state
    #: directory was reset, or the device record is older than it). ``next_seq`` has moved
    #: past it, and the agent should report its status again.
    ahead: bool = False


class Outbox:
    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        self.path = path
        self._fsync = fsync
        self._lock = threading.Lock()
        self._events: list[StatusEvent] = []
        self._next_seq = 1
        self._acked_seq = 0

    @classmethod
    def open(cls, path: Path, *, fsync: bool = True) -> Outbox:
        """Load the outbox at ``path`` (empty if absent); crash leftovers are removed."""
        outbox = cls(path, fsync=fsync)
        outbox._load()
        return outbox

    # --- reading --------------------------------------------------------------------

    @property
    def next_seq(self) -> int:
        return self._next_seq

    @property
    def acked_seq(self) -> int:
        return self._acked_seq

    def __len__(self) -> int:
        return len(self._events)

    def pending(self, limit: int | None = None) -> list[StatusEvent]:
        """Unacknowledged events in sequence order, the oldest ``limit`` of them."""
        with self._lock:
            return list(self._events[:limit])

    # --- writing --------------------------------------------------------------------

    def append(
        self, observed_generation: int, conditions: Sequence[Condition], at: float | None = None
    ) -> StatusEvent:
        """Give the event the next sequence number and make it durable; returns it."""
        with self._lock:
            event = StatusEvent(
                seq=self._next_seq,
                observed_generation=observed_generation,
                conditions=list(conditions),
                at=time.time() if at is None else at,
            )
            self._save(self._events + [event], self._next_seq + 1, self._acked_seq)
            return event

    def ack(self, acked_seq: int) -> AckResult:
        """Drop the events the server has applied (``seq <= acked_seq``)."""
        with self._lock:
            if acked_seq <= self._acked_seq:
                return AckResult(removed=0)
            ahead = acked_seq >= self._next_seq
            keep = [e for e in self._events if e.seq > acked_seq]
            removed = len(self._events) - len(keep)
            next_seq = max(self._next_seq, acked_seq + 1)
            if ahead:
                log.warning(
                    "server acknowledged seq %s but this outbox assigned only up to %s; "
                    "continuing from %s",
                    acked_seq,
                    self._next_seq - 1,
                    next_seq,
                )
            self._save(keep, next_seq, acked_seq)
            return AckResult(removed=removed, ahead=ahead)

    def flush_durable(self) -> int:
        """Make every queued event durable now, whatever ``fsync`` says; the last seq.

        Called before a reboot: a simulated device writes its outbox without fsync, a real
        one already fsyncs each write, and either way nothing queued may be lost with the
        page cache. The events are sent after the restart.
        """
        with self._lock:
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return self._next_seq - 1
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
            return self._next_seq - 1

    # --- file -----------------------------------------------------------------------

    def _save(self, events: list[StatusEvent], next_seq: int, acked_seq: int) -> None:
        body = {
            "format": FORMAT,
            "next_seq": next_seq,
            "acked_seq": acked_seq,
            "events": [e.model_dump(mode="json") for e in events],
        }
        atomic_write(self.path, json.dumps(body).encode(), 0o600, fsync=self._fsync)
        # Only once the file is in place does memory move on.
        self._events, self._next_seq, self._acked_seq = events, next_seq, acked_seq

    def _load(self) -> None:
        removed = remove_stale_temps(self.path)
        if removed:
            log.info("removed %s temp file(s) left by an interrupted write", removed)
        try:
            data = read_json(self.path)
        except ValueError as e:
            raise OutboxError(f"outbox {self.path} is not JSON: {e}") from e
        if data is None:
            return
        try:
            events = [StatusEvent.model_validate(e) for e in data["events"]]
            next_seq = int(data["next_seq"])
            acked_seq = int(data.get("acked_seq", 0))
        except (KeyError, TypeError, ValueError, ValidationError) as e:
            raise OutboxError(f"outbox {self.path} is malformed: {e}") from e
        last = max((e.seq for e in events), default=0)
        self._events = sorted(events, key=lambda e: e.seq)
        self._next_seq = max(next_seq, last + 1, acked_seq + 1)
        self._acked_seq = acked_seq
