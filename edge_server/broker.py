"""The embedded MQTT broker: amqtt in-process, behind Corral's own TLS listener.

The scheme is the same as Mosquitto's (``edge_server.mosquitto``): TLS only, a client
certificate signed by the Corral CA is required, and the identity is the certificate's CN. A
device may subscribe only to its own nudge topic and publish only its own status and presence
(its last will too); the server identity may subscribe to every device's status and presence
and publish every nudge. Nothing else for anybody.

How, in three layers:

1. **The gate** (:meth:`EmbeddedBroker._serve`). We own the listening socket and do the TLS
   handshake ourselves with ``CERT_REQUIRED`` (amqtt's own listener uses ``CERT_OPTIONAL``).
   We then read the CONNECT packet and admit it only if the client id is the CN, the will (if
   any) goes to a topic the CN may publish, and ``is_revoked(serial, cn)`` says no. A failed
   handshake is just closed; a refused CONNECT gets CONNACK "not authorised" ("server
   unavailable" if ``is_revoked`` raised: we fail closed). Only then is the connection handed
   to amqtt through its external-listener API, replaying the CONNECT. This has to happen
   before amqtt sees the CONNECT: amqtt 0.12.1 deletes or takes over the session of that
   client id *before* it asks the auth plugins, so a refused client could still wipe another
   device's session.
2. **The auth plugin** (``broker_policy.CertificateAuthPlugin``), which amqtt requires, accepts a
   session only if its TLS connection went through the gate with that client id, and records
   the identity on the session for the topic plugin.
3. **The topic plugin** (``broker_policy.DeviceAclPlugin``) enforces the ACL on SUBSCRIBE,
   PUBLISH and every delivery (RECEIVE). A refused subscription gets SUBACK 0x80; a refused
   publish is acknowledged and dropped (MQTT 3.1.1 has no way to say no).

One amqtt fix: when any client connects, amqtt 0.12.1 sends it the retained messages of every
topic filter that *any* session subscribes to, without asking the topic plugin. Our
:class:`_Broker` sends retained messages only for the session's own subscriptions.

What lives where: sessions of ``clean_session=False`` clients (their subscriptions and queued
QoS 1 messages) and retained messages are kept in memory while the broker runs; a disconnected
persistent session expires after ``SESSION_EXPIRY_SECONDS``. Nothing survives :meth:`stop` or a
process restart: devices resubscribe when they reconnect, and the server's channel republishes
every nudge a device has not yet observed when it reconnects.

One connection per client id: a client that connects again (an agent whose old link is
half-dead) first has its previous connection closed by the gate (:meth:`_take_over`), so
amqtt resumes the session instead of running its own take-over, which left the session
marked offline and its QoS 1 messages queued. Revocation is checked when a client connects,
and :meth:`EmbeddedBroker.end` (the app's ``SessionControl``) closes the connections of
revoked devices at once.

amqtt speaks MQTT 3.1.1 only, so there are no shared subscriptions here (Mosquitto has them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import struct
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amqtt.adapters import ReaderAdapter, StreamReaderAdapter, StreamWriterAdapter
from amqtt.broker import Broker
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.mqtt.connack import (
    NOT_AUTHORIZED,
    SERVER_UNAVAILABLE,
    UNACCEPTABLE_PROTOCOL_VERSION,
    ConnackPacket,
)
from amqtt.mqtt.connect import ConnectPacket
from amqtt.mqtt.packet import CONNECT, MQTTFixedHeader
from amqtt.session import Session

from edge_server import broker_policy
from edge_server.broker_policy import (
    _POLICIES,
    REVOCATION_CHECK_FAILED,
    BrokerStats,
    IsRevoked,
    PeerIdentity,
    Policy,
)

log = logging.getLogger(__name__)


CONNECT_TIMEOUT = 10.0
MAX_CONNECT_BYTES = 64 * 1024
BACKLOG = 1024  # a fleet reconnects at once after a restart
SESSION_EXPIRY_SECONDS = 14 * 24 * 3600
TAKE_OVER_TIMEOUT = 10.0
KEEPALIVE_GRACE = 1.5  # MQTT 3.1.1: a server closes a client silent for 1.5 × its keepalive
MQTT_311 = 4
LISTENER = "default"


class _SnapshotDict(dict[str, list[tuple[Session, int]]]):
    """amqtt 0.12.1 iterates its subscription table across awaits while other connections
    change it: ``RuntimeError: dictionary changed size during iteration``, and the broadcast
    being delivered is lost. Iterating over a snapshot makes that safe."""

    def __iter__(self) -> Iterator[str]:
        return iter(list(super().keys()))

    def items(self) -> list[tuple[str, list[tuple[Session, int]]]]:  # type: ignore[override]
        return list(super().items())


class _ExpectedTimeouts(logging.Filter):
    """A QoS 1 delivery to a client whose link is cut times out; amqtt logs that as an ERROR
    with a traceback. It is expected on flaky links (the message stays queued for the
    session), so it is logged as one WARNING line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], TimeoutError):
            record.msg = "delivery timed out (client unreachable?): %s"
            record.args = (record.exc_info[1],)
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


class _Broker(Broker):
    """amqtt's broker, sending retained messages only for a session's own subscriptions,
    and iterating its subscriptions safely."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._subscriptions = _SnapshotDict(self._subscriptions)

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Session
    ) -> None:
        # amqtt 0.12.1 calls this, on connect, for every filter of every session.
        topic_filter, _ = subscription
        granted = next(
            (
                qos
                for holder, qos in self.subscriptions.get(topic_filter, ())
                if holder.client_id == session.client_id
            ),
            None,
        )
        if granted is not None:
            await super()._publish_retained_messages_for_subscription(
                (topic_filter, granted), session
            )


class _ReplayReader(ReaderAdapter):
    """Records what the gate reads (the CONNECT), then replays it to amqtt before the rest."""

    def __init__(self, inner: ReaderAdapter) -> None:
        self._inner = inner
        self._buffer = bytearray()
        self._recording = True
        self.last_data = time.monotonic()  # when bytes last arrived

    def replay(self) -> _ReplayReader:
        self._recording = False
        return self

    async def read(self, n: int = -1) -> bytes:
        if self._recording:
            data: bytes = await self._inner.read(n)
            self._buffer += data
            return data
        if not self._buffer:
            data = bytes(await self._inner.read(n))
            if data:
                self.last_data = time.monotonic()
            return data
        if n == -1:
            head = bytes(self._buffer)
            self._buffer.clear()
            return head + bytes(await self._inner.read(-1))
        head = bytes(self._buffer[:n])
        del self._buffer[:n]
        if len(head) < n:
            head += bytes(await self._inner.read(n - len(head)))
        return head

    def feed_eof(self) -> None:
        self._inner.feed_eof()


def _server_tls(ca_path: Path, cert_path: Path, key_path: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca_path))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_path, key_path)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _filter_unreachable_clients(loop: asyncio.AbstractEventLoop) -> None:
    """amqtt also leaves the task of a QoS 1 delivery that timed out (the client was killed
    or cut off) unretrieved, so asyncio logs it with a traceback. Log those as one warning
    line; every other unhandled error still goes to the previous handler."""
    previous = loop.get_exception_handler()

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        future = context.get("future")
        coro = getattr(future, "get_coro", lambda: None)() if future is not None else None
        module = getattr(getattr(coro, "cr_code", None), "co_filename", "")
        if isinstance(error, TimeoutError) and "/amqtt/" in module:
            log.warning("MQTT delivery timed out (client unreachable?): %s", error)
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handle)


def _quiet_library_logs() -> None:
    """amqtt and transitions log every connection at INFO; keep them at WARNING unless an
    entry point chose a level for them."""
    broker_log = logging.getLogger("amqtt.broker")
    if not any(isinstance(f, _ExpectedTimeouts) for f in broker_log.filters):
        broker_log.addFilter(_ExpectedTimeouts())
    for name in ("amqtt", "transitions"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)


class EmbeddedBroker:
    def __init__(
        self,
        host: str,
        port: int,
        ca_path: Path,
        cert_path: Path,
        key_path: Path,
        is_revoked: IsRevoked,
        server_identity: str = "corral-server",
    ) -> None:
        """``port`` 0 picks a free port; :attr:`port` and :attr:`url` show it after start."""
        self.host = host
        self.port = port
        self.ca_path = ca_path
        self.cert_path = cert_path
        self.key_path = key_path
        self.policy = Policy(is_revoked, server_identity)
        self._key = uuid.uuid4().hex
        self._amqtt: _Broker | None = None
        self._server: asyncio.Server | None = None
        self._tls: ssl.SSLContext | None = None
        self._gated: set[asyncio.StreamWriter] = set()
        self._live: dict[str, _Live] = {}  # client id -> its admitted connection

    @property
    def stats(self) -> BrokerStats:
        return self.policy.stats

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqtts://{host}:{self.port}"

    def reload_certificate(self) -> None:
        """Serve the certificate now in ``cert_path`` on new handshakes (after a renewal)."""
        if self._tls is not None:
            self._tls.load_cert_chain(self.cert_path, self.key_path)

    def _amqtt_config(self) -> dict[str, Any]:
        policy = {"policy": self._key}
        return {
            "listeners": {LISTENER: {"type": "external"}},
            "session_expiry_interval": SESSION_EXPIRY_SECONDS,
            "plugins": {
                f"{broker_policy.__name__}.CertificateAuthPlugin": policy,
                f"{broker_policy.__name__}.DeviceAclPlugin": policy,
            },
        }

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the embedded broker is already running")
        _quiet_library_logs()
        _filter_unreachable_clients(asyncio.get_running_loop())
        self._tls = await asyncio.to_thread(
            _server_tls, self.ca_path, self.cert_path, self.key_path
        )
        _POLICIES[self._key] = self.policy
        amqtt = _Broker(self._amqtt_config())
        await amqtt.start()
        try:
            self._server = await asyncio.start_server(
                self._serve, self.host, self.port, backlog=BACKLOG
            )
        except OSError:
            await amqtt.shutdown()
            _POLICIES.pop(self._key, None)
            raise
        self._amqtt = amqtt
        if self.port == 0:
            self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        server, amqtt = self._server, self._amqtt
        self._server = self._amqtt = None
        if server is not None:
            server.close()
        for writer in list(self._gated):
            writer.close()
        if amqtt is not None:
            await amqtt.shutdown()
        if server is not None:
            await server.wait_closed()
        _POLICIES.pop(self._key, None)

    # --- the gate ------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        admitted: _Admitted | None = None
        self._gated.add(writer)
        try:
            admitted = await self._gate(reader, writer)
        finally:  # an error (in is_revoked, say) closes the connection and is logged by asyncio
            self._gated.discard(writer)
            amqtt = self._amqtt
            if admitted is None or amqtt is None:
                writer.close()
        if admitted is None or amqtt is None:
            return
        client_id = admitted.client_id
        live = _Live(writer, admitted.reader, admitted.keep_alive)
        await self._take_over(client_id, live)
        self._refresh_session(client_id, writer.get_extra_info("ssl_object"))
        self.stats.connections_accepted += 1
        live.watch()
        try:
            await amqtt.external_connected(admitted.reader, StreamWriterAdapter(writer), LISTENER)
        except ConnectionError as e:
            # The client went away while amqtt set its session up or closed it (amqtt's own
            # close drains the writer): a client's doing, not a server error.
            log.info("MQTT connection of %s lost: %s", client_id, e)
        finally:
            live.unwatch()
            if self._live.get(client_id) is live:
                del self._live[client_id]
            live.done.set()

    async def _take_over(self, client_id: str, live: _Live) -> None:
        """Close the connection that holds ``client_id`` and wait until amqtt has finished
        with it, then make ``live`` the holder.

        amqtt 0.12.1's own take-over shares one session object between the old connection
        and the new one; when the old connection's handler then ends, it marks that shared
        session disconnected, and amqtt queues every later message for the session instead
        of sending it, although the new connection is up. Ending the old connection first
        makes amqtt's CONNECT see a disconnected session, which it simply resumes.
        """
        while (old := self._live.get(client_id)) is not None:
            log.info("MQTT client %s connected again; closing its previous connection", client_id)
            old.close()
            try:
                async with asyncio.timeout(TAKE_OVER_TIMEOUT):
                    await old.done.wait()
            except TimeoutError:
                log.warning("the previous connection of %s did not end in time", client_id)
                if self._live.get(client_id) is old:
                    del self._live[client_id]
        self._live[client_id] = live

    async def end(self, device_ids: Sequence[str]) -> None:
        """End these clients' live connections (a revoked device; see ``sessions.py``).
        The gate asks the store again when they reconnect, and refuses them."""
        ending = [live for d in device_ids if (live := self._live.get(d)) is not None]
        for live in ending:
            live.close()
        if ending:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TAKE_OVER_TIMEOUT):
                    await asyncio.gather(*(live.done.wait() for live in ending))
        log.info("ended %d live MQTT connection(s) of %d device(s)", len(ending), len(device_ids))

    async def _gate(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> _Admitted | None:
        """Handshake, read the CONNECT and admit it; the reader replays it to amqtt."""
        try:
            return await self._admit(reader, writer)
        except _Refused as refusal:
            await self._refuse(writer, refusal)
            return None

    async def _admit(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> _Admitted:
        recorder = _ReplayReader(StreamReaderAdapter(reader))
        connect = await self._read_connect(recorder, writer)
        if connect.proto_level != MQTT_311:
            raise _Refused("protocol", connack=UNACCEPTABLE_PROTOCOL_VERSION)
        ssl_object = writer.get_extra_info("ssl_object")
        client_id = connect.client_id or ""
        will_topic = connect.will_topic if connect.will_flag else None
        peer, reason = await self.policy.admit(ssl_object, client_id, will_topic)
        if reason == REVOCATION_CHECK_FAILED:  # the client should retry later
            raise _Refused(reason, peer=peer, connack=SERVER_UNAVAILABLE)
        if reason is not None:
            raise _Refused(reason, peer=peer, connack=NOT_AUTHORIZED)
        return _Admitted(recorder.replay(), client_id, connect.keep_alive)

    async def _read_connect(
        self, recorder: _ReplayReader, writer: asyncio.StreamWriter
    ) -> ConnectPacket:
        assert self._tls is not None  # noqa: S101 - set by start()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await writer.start_tls(self._tls)
                header = await MQTTFixedHeader.from_stream(recorder)
                if header is None or header.packet_type != CONNECT:
                    raise _Refused("not_connect")
                if header.remaining_length > MAX_CONNECT_BYTES:
                    raise _Refused("connect_too_large")
                return await ConnectPacket.from_stream(recorder, fixed_header=header)
        except TimeoutError as e:  # before OSError, its base class
            raise _Refused("timeout") from e
        except ssl.SSLError as e:
            raise _Refused("tls", detail=str(e.reason)) from e
        except (
            OSError,
            EOFError,
            AMQTTError,
            MQTTError,
            NoDataError,
            ValueError,
            struct.error,
        ) as e:
            raise _Refused("malformed", detail=repr(e)) from e

    def _refresh_session(self, client_id: str, ssl_object: ssl.SSLObject) -> None:
        """amqtt resumes a persistent session with the TLS object of its first connection."""
        amqtt = self._amqtt
        entry = amqtt.sessions.get(client_id) if amqtt is not None else None
        if entry is not None:
            entry[0].ssl_object = ssl_object

    async def _refuse(self, writer: asyncio.StreamWriter, refusal: _Refused) -> None:
        self.stats.refuse(refusal.reason)
        peer = refusal.peer
        log.info(
            "MQTT connection from %s refused: %s%s%s",
            writer.get_extra_info("peername"),
            refusal.reason,
            f" ({refusal.detail})" if refusal.detail else "",
            f" for CN {peer.cn}, serial {peer.serial}" if peer else "",
        )
        if refusal.connack is not None:
            writer.write(ConnackPacket.build(0, refusal.connack).to_bytes())
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    await writer.drain()
        writer.close()


@dataclass(frozen=True)
class _Admitted:
    reader: _ReplayReader
    client_id: str
    keep_alive: int


class _Live:
    """An admitted connection: closed at once (no flush) when taken over, revoked or
    silent; ``done`` is set once amqtt has finished with it.

    amqtt 0.12.1 never enforces the keepalive (its broker's read-timeout handler does
    nothing), so a client whose link died stayed connected, and listed online, until TCP
    gave up (about 15 minutes when the broker had something to send, never otherwise).
    :meth:`watch` closes a connection on which nothing arrived for 1.5 × its keepalive, as
    MQTT 3.1.1 says; amqtt then publishes the client's will.
    """

    def __init__(self, writer: asyncio.StreamWriter, reader: _ReplayReader, keep_alive: int):
        self.writer = writer
        self.reader = reader
        self.keep_alive = keep_alive
        self.done = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None

    def close(self) -> None:
        self.writer.transport.abort()

    def watch(self) -> None:
        if self.keep_alive > 0:
            self._timer = asyncio.get_running_loop().call_later(self.keep_alive / 2, self._check)

    def unwatch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        silent = time.monotonic() - self.reader.last_data
        if silent > KEEPALIVE_GRACE * self.keep_alive:
            log.info(
                "MQTT client silent for %.0fs (keepalive %ss): closing", silent, self.keep_alive
            )
            self._timer = None
            self.close()
            return
        self.watch()


class _Refused(Exception):
    def __init__(
        self,
        reason: str,
        *,
        detail: str = "",
        peer: PeerIdentity | None = None,
        connack: int | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail
        self.peer = peer
        self.connack = connack
