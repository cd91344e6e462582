"""The agent daemon's bookkeeping: its timers, the pass running now, the link it talks
through, and how its tasks wait for an event (:func:`wait_event`)."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass

from node_image.agent.context import Supersede
from node_image.agent.mqtt import MqttChannel
from node_image.agent.outbox import Outbox
from node_image.agent.settings import Identity
from node_image.agent.transport import ApiClient, Backoff
from node_image.boot import RebootRequested

__all__ = ["Link", "Pass", "Timers", "wait_event"]

log = logging.getLogger(__name__)


@dataclass
class Timers:
    """When the worker next pulls and next retries a failed reconcile (monotonic)."""

    pull_backoff: Backoff
    retry_backoff: Backoff
    last_pull: float = -math.inf
    pull_factor: float = 1.0
    pull_blocked_until: float = -math.inf
    retry_at: float = math.inf

    def retry_later(self) -> float:
        """Retry the reconcile after the retry backoff's next delay; that delay."""
        delay = self.retry_backoff.next()
        self.retry_at = time.monotonic() + delay
        return delay


@dataclass
class Pass:
    """The reconcile pass running now, and how to supersede it."""

    task: asyncio.Task[None]
    generation: int
    supersede: Supersede

    async def cancel(self) -> None:
        """Cancel the pass outright (the agent is stopping) and wait for it to end."""
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            if not self.task.cancelled():
                raise  # the waiting task is being cancelled too; the pass has ended
        except (Exception, RebootRequested) as e:
            log.debug("the reconcile pass ended while stopping: %r", e)


@dataclass(frozen=True)
class Link:
    """What the agent talks through once it has an identity."""

    identity: Identity
    api: ApiClient
    outbox: Outbox
    mqtt: MqttChannel | None


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait for ``event`` at most ``seconds``; True if it was set.

    Not ``asyncio.wait_for``: on Python 3.11 it returns the inner result when the event
    was set just before the waiting task is cancelled, so the cancel is lost and a task
    being stopped waits on (the worker or the flusher, and ``Agent.stop`` with it).
    ``asyncio.timeout`` cancels the awaiting task itself, and a cancel is never swallowed.
    """
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(None if math.isinf(seconds) else max(0.0, seconds)):
            await event.wait()
    except TimeoutError:
        return False
    return True
