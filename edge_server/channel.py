"""The server's side of the MQTT channel: nudges out, status and presence in.

One aiomqtt client (paho underneath) with the server's own certificate. It reconnects
forever with backoff. On every (re)connect it republishes the nudges of devices that have
not yet observed their spec, so a change made while the broker was away still arrives.
Nudges are retained, QoS 1, ``{"generation": N, "acked_seq": S}``; secrets never go here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_server.errors import ServerError
from edge_server.ops import status as status_ops
from edge_server.pki import MQTT_IDENTITY
from edge_server.specs import Change
from edge_server.store import Store
from registration import protocol
from registration.desired import (
    TOPIC_ROOT,
    Nudge,
    Presence,
    StatusBatch,
    device_of_topic,
    nudge_topic,
)
from registration.document import ValidationError
from registration.mqtt import ClosingClient

if TYPE_CHECKING:
    from edge_server.notifier import Notifier

log = logging.getLogger(__name__)


PUBLISH_CONCURRENCY = 512
HANDLER_CONCURRENCY = 256


@dataclass(frozen=True)
class ChannelSettings:
    url: str
    ca: Path
    cert: Path
    key: Path
    mqtt5: bool = False
    share_group: str = "corral"


@dataclass
class ChannelStats:
    connected: bool = False
    connects: int = 0
    nudges_sent: int = 0
    status_applied: int = 0
    status_duplicates: int = 0
    presence: int = 0
    dropped: int = 0
    drop_reasons: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str) -> None:
        self.dropped += 1
        self.drop_reasons[reason] = self.drop_reasons.get(reason, 0) + 1


class Channel:
    def __init__(self, settings: ChannelSettings, store: Store, notifier: Notifier) -> None:
        self.settings = settings
        self.store = store
        self.notifier = notifier
        self.stats = ChannelStats()
        self._client: aiomqtt.Client | None = None
        self._publish_slots = asyncio.Semaphore(PUBLISH_CONCURRENCY)
        self._handler_slots = asyncio.Semaphore(HANDLER_CONCURRENCY)
        self._tasks: set[asyncio.Task[None]] = set()

    # --- outgoing ------------------------------------------------------------------

    async def nudge(self, changes: Iterable[Change]) -> None:
        """Publish nudges; when disconnected they are republished on reconnect."""
        client = self._client
        if client is None:
            return
        await asyncio.gather(
            *(self._publish_nudge(client, c.device_id, c.generation, c.acked_seq) for c in changes)
        )

    async def _publish_nudge(
        self, client: aiomqtt.Client, device_id: str, generation: int, acked_seq: int
    ) -> None:
        payload = Nudge(generation=generation, acked_seq=acked_seq).model_dump_json()
        async with self._publish_slots:
            try:
                await client.publish(nudge_topic(device_id), payload, qos=1, retain=True)
            except aiomqtt.MqttError as e:
                log.info("nudge for %s not sent (%s); it is resent on reconnect", device_id, e)
                return
        self.stats.nudges_sent += 1

    # --- the connection --------------------------------------------------------------

    def _tls(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.settings.ca))
        ctx.load_cert_chain(self.settings.cert, self.settings.key)
        return ctx

    def _client_for(self, tls: ssl.SSLContext) -> aiomqtt.Client:
        url = urlparse(self.settings.url)
        common: dict[str, Any] = {
            "hostname": url.hostname or "127.0.0.1",
            "port": url.port or 8883,
            "identifier": MQTT_IDENTITY,
            "tls_context": tls,
            "keepalive": 30,
            "max_inflight_messages": 1000,
            "max_queued_outgoing_messages": 0,
            "timeout": 30,
        }
        if self.settings.mqtt5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 3600
            return ClosingClient(
                protocol=aiomqtt.ProtocolVersion.V5,
                clean_start=False,
                properties=props,
                **common,
            )
        return ClosingClient(protocol=aiomqtt.ProtocolVersion.V311, clean_session=False, **common)

    def _subscriptions(self) -> list[str]:
        topics = [f"{TOPIC_ROOT}/+/status", f"{TOPIC_ROOT}/+/presence"]
        if self.settings.mqtt5:
            return [f"$share/{self.settings.share_group}/{t}" for t in topics]
        return topics

    async def run(self) -> None:
        """Connect, subscribe, consume; reconnect forever with capped, jittered backoff."""
        delay = 0.5
        while True:
            try:
                tls = await asyncio.to_thread(self._tls)  # the certificate on disk now
                async with self._client_for(tls) as client:
                    for topic in self._subscriptions():
                        await client.subscribe(topic, qos=1)
                    self._client = client
                    self.stats.connected = True
                    self.stats.connects += 1
                    delay = 0.5
                    log.info("MQTT channel connected to %s", self.settings.url)
                    await self._republish(client)
                    async for message in client.messages:
                        await self._handler_slots.acquire()
                        task = asyncio.create_task(self._handle(message))
                        self._tasks.add(task)
                        task.add_done_callback(self._done)
            except aiomqtt.MqttError as e:
                log.warning("MQTT channel lost (%s); retrying in %.1fs", e, delay)
            finally:
                self._client = None
                self.stats.connected = False
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))  # noqa: S311 - jitter
            delay = min(delay * 2, 10.0)

    def reconnect(self) -> None:
        """Drop the connection; :meth:`run` connects again with the certificate on disk now
        (after a renewal). aiomqtt has no public call that ends a live session."""
        client = self._client
        if client is not None:
            client._client.disconnect()  # noqa: SLF001

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._handler_slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("MQTT message handler failed", exc_info=task.exception())

    async def _republish(self, client: aiomqtt.Client) -> None:
        pending = await status_ops.pending_nudges(self.store)
        if pending:
            log.info("republishing %d pending nudges", len(pending))
        await asyncio.gather(
            *(self._publish_nudge(client, c.device_id, c.generation, c.acked_seq) for c in pending)
        )

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- incoming --------------------------------------------------------------------

    async def _handle(self, message: aiomqtt.Message) -> None:
        where = device_of_topic(str(message.topic))
        if where is None:
            self.stats.drop("unknown_topic")
            return
        device_id, kind = where
        payload = message.payload
        if not isinstance(payload, bytes | bytearray):
            self.stats.drop("not_bytes")
            return
        try:
            data = protocol.loads(payload)
            if kind == "status":
                await self._status(device_id, StatusBatch.model_validate(data))
            elif kind == "presence":
                await self._presence(device_id, Presence.model_validate(data))
            else:
                self.stats.drop("unknown_kind")
        except (ValueError, ValidationError, protocol.InvalidJson) as e:
            self.stats.drop(f"malformed_{kind}")
            log.warning("dropped malformed %s from %s: %s", kind, device_id, str(e)[:200])
        except ServerError as e:  # refused by the operation, e.g. a generation ahead
            self.stats.drop(e.code)
            log.warning("dropped %s from %s: %s", kind, device_id, e.detail[:200])

    async def _status(self, device_id: str, batch: StatusBatch) -> None:
        ack = await self.notifier.run(status_ops.apply_status(self.store, device_id, batch, "mqtt"))
        self.count_status(len(batch.events), ack.applied)

    def count_status(self, events: int, applied: int) -> None:
        """Status applied over either transport, for ``GET /api/v1/stats``."""
        self.stats.status_applied += applied
        self.stats.status_duplicates += events - applied

    async def _presence(self, device_id: str, presence: Presence) -> None:
        self.stats.presence += 1
        await self.notifier.run(status_ops.presence(self.store, device_id, presence.online))
