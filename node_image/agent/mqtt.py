"""How the agent talks MQTT to the server's broker: nudges in, presence and status out.

aiomqtt (paho-mqtt under asyncio): no thread per agent, so thousands fit in one event loop.
Apart from :mod:`node_image.agent.transport` (HTTPS) so that a first boot, which registers
over HTTPS, does not load MQTT before it registers.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiomqtt
import paho.mqtt.client as paho

from node_image.agent.transport import Backoff
from node_image.errors import AgentError
from registration.desired import (
    Nudge,
    Presence,
    StatusBatch,
    nudge_topic,
    presence_topic,
    status_topic,
)
from registration.document import ValidationError
from registration.mqtt import ClosingClient

log = logging.getLogger(__name__)

MQTTS_PORT = 8883


class ChannelDown(AgentError):
    """MQTT is not connected, or a publish did not complete."""


class MqttClient(ClosingClient):
    """The MQTT client (:class:`registration.mqtt.ClosingClient`: it closes its socket when
    a connect fails) with a slower housekeeping tick.

    paho's ``loop_misc`` sends keepalive pings and drops a connection whose ping went
    unanswered; aiomqtt runs it every second, which for thousands of idle agents in one loop
    is thousands of wake-ups a second. A sixth of the keepalive is enough: see
    :class:`MqttSettings` for what the tick adds to the time a dead connection goes unnoticed.
    """

    misc_interval: float = 5.0

    async def _misc_loop(self) -> None:
        while self._client.loop_misc() == paho.MQTT_ERR_SUCCESS:  # noqa: ASYNC110
            await asyncio.sleep(self.misc_interval)


#: paho's housekeeping tick, as a fraction of the keepalive.
TICKS_PER_KEEPALIVE = 6


@dataclass(frozen=True)
class MqttSettings:
    """How fast a dead MQTT session is noticed and replaced.

    paho pings once nothing has arrived for ``keepalive`` seconds and drops the connection
    when nothing has arrived for another ``keepalive``; it checks every tick
    (``keepalive / TICKS_PER_KEEPALIVE``). So a connection that stopped delivering is dropped
    within 2 × keepalive + 2 ticks (with the agent's 15 s: 35 s; with 60 s and a 5 s tick it
    was 130 s). The agent also drops the session at once when a status it published is not
    acknowledged in time (``MqttChannel.reconnect``). It then reconnects after
    ``backoff_base`` (±20 %), doubling per failed attempt up to ``backoff_cap``; each
    attempt gives up after ``timeout``. The retained nudge arrives with the subscription.
    """

    keepalive: int = 15
    timeout: float = 10.0
    backoff_base: float = 1.0
    backoff_cap: float = 30.0


def mqtt_address(url: str) -> tuple[str, int]:
    """``mqtts://host:port`` → (host, port). Only TLS: the broker knows devices by cert."""
    parts = urlsplit(url)
    if parts.scheme != "mqtts" or not parts.hostname:
        raise AgentError(f"MQTT endpoint {url!r} must be an mqtts:// URL")
    return parts.hostname, parts.port or MQTTS_PORT


class MqttChannel:
    """One device's MQTT session: persistent (clean_session=False), with a last will.

    :meth:`run` connects and reconnects forever with backoff. It announces presence
    (retained), subscribes to the device's nudge topic only, and hands every nudge to
    ``on_nudge``. ``on_state`` is told each time the connection comes up or goes down.
    """

    def __init__(
        self,
        device_id: str,
        url: str,
        context: ssl.SSLContext,
        on_nudge: Callable[[Nudge], None],
        on_state: Callable[[bool], None],
        settings: MqttSettings = MqttSettings(),  # noqa: B008 - frozen
    ) -> None:
        self._host, self._port = mqtt_address(url)
        self._device_id = device_id
        self._context = context
        self._on_nudge = on_nudge
        self._on_state = on_state
        self._settings = settings
        self._client: MqttClient | None = None
        self._broken = asyncio.Event()
        self._broken_reason = ""

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def run(self) -> None:
        backoff = Backoff(self._settings.backoff_base, self._settings.backoff_cap)
        while True:
            try:
                await self._session(backoff)
            except aiomqtt.MqttError as e:
                log.info("MQTT %s:%s: %s", self._host, self._port, e)
            delay = backoff.next()
            log.debug("MQTT reconnect in %.1fs", delay)
            await asyncio.sleep(delay)

    def reconnect(self, reason: str) -> None:
        """The session looks broken (a status went unacknowledged): drop it and connect
        again, rather than keep a subscription that may no longer deliver."""
        if self._client is not None and not self._broken.is_set():
            log.info("MQTT session dropped: %s; reconnecting", reason)
            self._broken_reason = reason
            self._broken.set()

    async def publish_status(self, batch: StatusBatch) -> None:
        client = self._client
        if client is None:
            raise ChannelDown("MQTT is not connected")
        try:
            await client.publish(
                status_topic(self._device_id),
                batch.model_dump_json(),
                qos=1,
                timeout=self._settings.timeout,
            )
        except aiomqtt.MqttError as e:
            raise ChannelDown(f"status not published: {e}") from e

    async def announce_offline(self) -> None:
        """Publish presence offline (retained) before a clean disconnect, which the broker
        answers by discarding the last will."""
        client = self._client
        if client is None:
            return
        try:
            await client.publish(
                presence_topic(self._device_id),
                Presence(online=False).model_dump_json(),
                qos=1,
                retain=True,
                timeout=self._settings.timeout,
            )
        except aiomqtt.MqttError as e:
            log.info("presence offline not published: %s", e)

    async def _session(self, backoff: Backoff) -> None:
        client = MqttClient(
            self._host,
            self._port,
            identifier=self._device_id,
            protocol=aiomqtt.ProtocolVersion.V311,
            clean_session=False,
            keepalive=self._settings.keepalive,
            timeout=self._settings.timeout,
            tls_context=self._context,
            will=aiomqtt.Will(
                presence_topic(self._device_id),
                Presence(online=False).model_dump_json(),
                qos=1,
                retain=True,
            ),
        )
        client.misc_interval = max(1.0, self._settings.keepalive / TICKS_PER_KEEPALIVE)
        async with client:
            await client.publish(
                presence_topic(self._device_id),
                Presence(online=True).model_dump_json(),
                qos=1,
                retain=True,
            )
            await client.subscribe(nudge_topic(self._device_id), qos=1)
            log.info("MQTT connected to %s:%s", self._host, self._port)
            backoff.reset()
            self._broken.clear()
            self._client = client
            self._on_state(True)
            try:
                await self._receive_until_broken(client)
            finally:
                self._client = None
                self._on_state(False)

    async def _receive_until_broken(self, client: MqttClient) -> None:
        """Hand nudges on until the connection ends (MqttError) or :meth:`reconnect`."""
        receiving = asyncio.ensure_future(self._receive(client))
        broken = asyncio.ensure_future(self._broken.wait())
        try:
            await asyncio.wait({receiving, broken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (receiving, broken):
                task.cancel()
            await asyncio.gather(receiving, broken, return_exceptions=True)
        if receiving.done() and not receiving.cancelled():
            receiving.result()  # raises the MqttError that ended the connection
        raise aiomqtt.MqttError(f"session dropped: {self._broken_reason or 'no messages'}")

    async def _receive(self, client: MqttClient) -> None:
        async for message in client.messages:
            self._received(message)

    def _received(self, message: aiomqtt.Message) -> None:
        payload = message.payload
        if not isinstance(payload, bytes | bytearray) or not payload:
            return  # a cleared retained message
        try:
            nudge = Nudge.model_validate_json(payload)
        except ValidationError as e:
            log.warning("ignored a nudge that does not validate: %s", e)
            return
        self._on_nudge(nudge)
