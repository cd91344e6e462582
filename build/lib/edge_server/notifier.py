"""The one place where committed changes become side effects.

Operations (:mod:`edge_server.ops`) change the database and return :class:`Changes`; the
:class:`Notifier` (``app[NOTIFIER]``) acts on them after the commit, in this order:

1. **nudges**: retained MQTT messages through the channel (``app[CHANNEL]``);
2. **revocations**: the CRL an external broker reads is rewritten (:mod:`revocation`), then
   the devices' live MQTT sessions are ended (``app[SESSIONS].end``);
3. **events**: handed to every subscriber (the dashboard's server-sent events).

A caller runs an operation through it, and gets the operation's value::

    row = await app[NOTIFIER].run(ops.groups.update(app[STORE], actor, name, body))

A new kind of side effect is added here, once, in :meth:`Notifier.publish`; a new
operation only says what changed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from aiohttp import web

from edge_server.keys import CA, CHANNEL, SESSIONS, SETTINGS, STORE
from edge_server.ops.changes import Changes, Done, Event
from edge_server.revocation import CrlWriter

log = logging.getLogger(__name__)

T = TypeVar("T")

SUBSCRIBER_QUEUE = 1000


class Subscription:
    """Events committed after :meth:`Notifier.subscribe`, in commit order. A subscriber that
    falls ``SUBSCRIBER_QUEUE`` events behind loses the newest ones and sees ``lost`` grow;
    it should then reload what it shows."""

    def __init__(self, notifier: Notifier) -> None:
        self._notifier = notifier
        self._queue: asyncio.Queue[Event] = asyncio.Queue(SUBSCRIBER_QUEUE)
        self.lost = 0

    def offer(self, event: Event) -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.lost += 1

    async def get(self) -> Event:
        return await self._queue.get()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._events()

    async def _events(self) -> AsyncIterator[Event]:
        while True:
            yield await self._queue.get()

    def close(self) -> None:
        self._notifier._subscribers.discard(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Notifier:
    def __init__(self, app: web.Application) -> None:
        self._app = app
        crl_path = app[SETTINGS].mqtt_crl_path
        self.crl = CrlWriter(crl_path, app[CA]) if crl_path is not None else None
        self._subscribers: set[Subscription] = set()

    async def run(self, operation: Awaitable[Done[T]]) -> T:
        """Await an operation, act on its changes, return its value."""
        done = await operation
        await self.publish(done.changes)
        return done.value

    async def publish(self, changes: Changes) -> None:
        if changes.nudges:
            channel = self._app.get(CHANNEL)
            if channel is not None:  # no channel yet: nudges go out on its first connect
                await channel.nudge(changes.nudges)
        if changes.revoked:
            if self.crl is not None:
                await self.crl.refresh(self._app[STORE])
            await self._app[SESSIONS].end(list(changes.revoked))
        for event in changes.events:
            for subscriber in list(self._subscribers):
                subscriber.offer(event)

    def subscribe(self) -> Subscription:
        """``with notifier.subscribe() as events: async for event in events: …``"""
        subscription = Subscription(self)
        self._subscribers.add(subscription)
        return subscription
