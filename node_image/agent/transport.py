"""How the agent talks to the server: HTTPS with mTLS (spec, status) and MQTT over TLS
(nudges in, presence and status out), plus the backoff both use to retry.

HTTPS goes through :class:`Https` (the standard library's ``http.client``, one kept-alive
connection), in a worker thread for the daemon and directly for registration; it keeps a real
agent's footprint small. MQTT is aiomqtt
(paho-mqtt under asyncio): no thread per agent, so thousands fit in one event loop.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit

import aiomqtt
import paho.mqtt.client as paho
from pydantic import BaseModel, ValidationError

from node_image.errors import AgentError
from registration.mqtt import ClosingClient

if TYPE_CHECKING:
    from registration.protocol import CertificateRenewResponse, K3sServerAck, K3sServerReport
from registration.desired import (
    Nudge,
    Presence,
    SpecDocument,
    StatusAck,
    StatusBatch,
    nudge_topic,
    presence_topic,
    status_topic,
)

log = logging.getLogger(__name__)

_A = TypeVar("_A", bound=BaseModel)

MQTTS_PORT = 8883

# --- backoff --------------------------------------------------------------------------


def jittered(seconds: float, fraction: float) -> float:
    """``seconds`` moved at random by up to ±``fraction`` of itself (not for crypto)."""
    return max(0.0, seconds * (1.0 + random.uniform(-fraction, fraction)))  # noqa: S311


@dataclass
class Backoff:
    """Exponential backoff with jitter: base, 2·base, 4·base … up to cap."""

    base: float
    cap: float
    jitter: float = 0.2
    attempt: int = 0

    def next(self) -> float:
        delay = min(self.cap, self.base * (2 ** min(self.attempt, 32)))
        self.attempt += 1
        return jittered(delay, self.jitter)

    def reset(self) -> None:
        self.attempt = 0


# --- TLS ------------------------------------------------------------------------------


def client_tls(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """A TLS context that trusts only the Corral CA and presents the device certificate.

    Blocking (reads files): call it through ``asyncio.to_thread``.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    context.load_cert_chain(str(cert), str(key))
    return context


# --- HTTPS ----------------------------------------------------------------------------


class ApiError(AgentError):
    """A request to the server failed; ``status`` is the HTTP status, None if none came."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def unverified_tls() -> ssl.SSLContext:
    """TLS that does not check the server: only to fetch the public CA, which is trusted
    afterwards only if its sha256 matches the registration token's."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # pinned by fingerprint afterwards
    return context


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def error_detail(self) -> str:
        """``error: detail`` from the server's JSON error body, else the body's start."""
        try:
            decoded = json.loads(self.body)
        except ValueError:
            decoded = None
        if isinstance(decoded, dict):
            return f"{decoded.get('error', '')}: {decoded.get('detail', '')}"
        return self.body[:200].decode(errors="replace")


class Https:
    """The agent's one HTTPS client: blocking, over one kept-alive connection to the server.

    The standard library's ``http.client`` keeps a real agent's footprint small (no
    ``requests``, no urllib3). :class:`ApiClient` runs it in a worker thread; registration
    calls it directly.
    """

    def __init__(
        self, url: str, context: ssl.SSLContext, timeout: float = 30.0, *, plain: bool = False
    ) -> None:
        """``plain`` also allows an ``http://`` URL: only for downloads, whose bytes are
        verified by sha256 and signature whatever carries them."""
        parts = urlsplit(url)
        schemes = ("https", "http") if plain else ("https",)
        if parts.scheme not in schemes or not parts.hostname:
            raise AgentError(f"API endpoint {url!r} must be an https:// URL")
        self.url = url.rstrip("/")
        self._plain = parts.scheme == "http"
        self._host = parts.hostname
        self._port = parts.port or (80 if self._plain else 443)
        self._prefix = parts.path.rstrip("/")
        self._context = context
        self._timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        url = self._prefix + path
        for attempt in range(2):
            reused = self._conn is not None
            conn = self._conn or self._connect()
            self._conn = None
            try:
                conn.request(method, url, body=body, headers=headers or {})
                response = conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                # A kept-alive connection the server closed meanwhile: retry once, fresh.
                # Safe for POST too: the server applies each (device, seq) once.
                stale = isinstance(e, http.client.RemoteDisconnected | ConnectionError)
                if reused and stale and attempt == 0:
                    continue
                raise ApiError(f"{method} {self.url}{path}: {e}") from e
            if not response.will_close:
                self._conn = conn
            else:
                conn.close()
            return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
        raise AssertionError("unreachable")

    def stream(
        self, path: str, headers: dict[str, str]
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """``GET path`` on a connection of its own, whose body the caller reads in chunks and
        then closes (blocking). For downloads: nothing is held in memory. Raises ``ApiError``
        when no answer comes."""
        conn = self._connect()
        try:
            conn.request("GET", self._prefix + path, headers=headers)
            return conn, conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise ApiError(f"GET {self.url}{path}: {e}") from e

    def _connect(self) -> http.client.HTTPConnection:
        if self._plain:
            return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        return http.client.HTTPSConnection(
            self._host, self._port, timeout=self._timeout, context=self._context
        )

    def reload_certificate(self, cert: Path, key: Path) -> None:
        """Present the certificate in ``cert`` from the next handshake on (blocking): it is
        loaded into the shared TLS context and the kept-alive connection is dropped."""
        self._context.load_cert_chain(str(cert), str(key))
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


@dataclass(frozen=True)
class PulledSpec:
    document: SpecDocument
    etag: str | None


class ApiClient:
    """The device's mTLS calls: ``GET …/spec`` and ``POST …/status``."""

    def __init__(
        self, api_url: str, device_id: str, context: ssl.SSLContext, timeout: float = 30.0
    ) -> None:
        self._https = Https(api_url, context, timeout)
        self._prefix = f"/api/v1/devices/{device_id}"
        self._device_id = device_id
        self._lock = asyncio.Lock()

    async def get_spec(self, etag: str | None) -> PulledSpec | None:
        """The device's spec, or None when it still matches ``etag`` (304)."""
        headers = {"If-None-Match": etag} if etag else {}
        reply = await self._call("GET", "/spec", None, headers)
        if reply.status == 304:
            return None
        self._check(reply, "GET spec")
        try:
            document = SpecDocument.model_validate_json(reply.body)
        except ValidationError as e:
            raise ApiError(f"the server sent a spec that does not validate: {e}") from e
        if document.device_id != self._device_id:
            raise ApiError(f"the server sent the spec of {document.device_id}")
        return PulledSpec(document, reply.headers.get("etag"))

    async def post_status(self, batch: StatusBatch) -> StatusAck:
        return await self._post("/status", batch, StatusAck, "a status ack")

    async def renew_certificate(self, csr: str) -> CertificateRenewResponse:
        """``POST …/certificate``: a new certificate for ``csr``, signed while the current one
        is still valid (mTLS with it)."""
        # registration's documents: loaded when needed, not by the idle agent.
        from registration.protocol import CertificateRenewRequest, CertificateRenewResponse

        request = CertificateRenewRequest(csr=csr)
        return await self._post("/certificate", request, CertificateRenewResponse, "a certificate")

    async def report_k3s_server(self, report: K3sServerReport) -> K3sServerAck:
        """``POST …/k3s``: this device, its group's K3s server node, says how to join it."""
        from registration.protocol import K3sServerAck

        return await self._post("/k3s", report, K3sServerAck, "a k3s ack")

    async def _post(self, path: str, document: BaseModel, answer: type[_A], what: str) -> _A:
        """POST ``document`` as JSON to ``path``; the answer, validated as ``answer``."""
        body = document.model_dump_json().encode()
        reply = await self._call("POST", path, body, {"Content-Type": "application/json"})
        self._check(reply, f"POST {path.lstrip('/')}")
        try:
            return answer.model_validate_json(reply.body)
        except ValidationError as e:
            raise ApiError(f"the server sent {what} that does not validate: {e}") from e

    async def reload_certificate(self, cert: Path, key: Path) -> None:
        """Present the certificate now in ``cert`` from the next handshake on: it is loaded
        into the TLS context (which MQTT shares), and the kept-alive connection is dropped."""
        async with self._lock:
            await asyncio.to_thread(self._https.reload_certificate, cert, key)

    async def close(self) -> None:
        async with self._lock:
            await asyncio.to_thread(self._https.close)

    async def _call(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> Reply:
        async with self._lock:  # one request at a time on the kept-alive connection
            return await asyncio.to_thread(
                self._https.request, method, self._prefix + path, body, headers
            )

    @staticmethod
    def _check(reply: Reply, what: str) -> None:
        if reply.status == 200:
            return
        if reply.status == 403:
            raise ApiError(
                f"{what} forbidden: certificate revoked or not this device", reply.status
            )
        raise ApiError(f"{what} failed ({reply.status}): {reply.error_detail()}", reply.status)


# --- MQTT -----------------------------------------------------------------------------


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
