"""Floors of the fleet benches: the cheapest work a fleet cannot do without, from one asyncio
process with the devices' own certificates and the cheapest client that still does it.

- N TLS connects + ``GET /healthz`` to the HTTPS server;
- N TLS connects + MQTT CONNECT (+ SUBSCRIBE) to the broker;
- N MQTT publish/receive exchanges over connections already open.

MQTT is spoken raw (3.1.1 over asyncio TLS streams, no client library): just what the floors
need.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from bench.fleet import DeviceFiles

HOST = "127.0.0.1"

# --------------------------------------------------------------------------- raw MQTT 3.1.1


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _mqtt_string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def mqtt_connect_packet(client_id: str, keepalive: int = 60) -> bytes:
    body = _mqtt_string("MQTT") + bytes([4, 0x02]) + struct.pack("!H", keepalive)
    body += _mqtt_string(client_id)
    return b"\x10" + _remaining_length(len(body)) + body


def mqtt_subscribe_packet(packet_id: int, topic: str, qos: int = 1) -> bytes:
    body = struct.pack("!H", packet_id) + _mqtt_string(topic) + bytes([qos])
    return b"\x82" + _remaining_length(len(body)) + body


def mqtt_publish_packet(
    topic: str, payload: bytes, packet_id: int, qos: int = 1, retain: bool = False
) -> bytes:
    body = _mqtt_string(topic) + (struct.pack("!H", packet_id) if qos else b"") + payload
    flags = 0x30 | (qos << 1) | (1 if retain else 0)
    return bytes([flags]) + _remaining_length(len(body)) + body


def mqtt_puback_packet(packet_id: int) -> bytes:
    return b"\x40\x02" + struct.pack("!H", packet_id)


MQTT_DISCONNECT = b"\xe0\x00"


async def read_mqtt_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """(first byte, body) of the next packet."""
    head = await reader.readexactly(1)
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return head[0], await reader.readexactly(length) if length else b""


def ack_publish(writer: asyncio.StreamWriter, kind: int, body: bytes) -> None:
    """PUBACK a PUBLISH of QoS 1 (``kind``, ``body`` as :func:`read_mqtt_packet` gives)."""
    if kind & 0x06:
        topic_len = struct.unpack("!H", body[:2])[0]
        packet_id = struct.unpack("!H", body[2 + topic_len : 4 + topic_len])[0]
        writer.write(mqtt_puback_packet(packet_id))


# --------------------------------------------------------------------------- floors


def device_tls(files: DeviceFiles) -> ssl.SSLContext:
    """The device's own TLS context, as the agent builds it (CA pinned, client cert)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(files.ca))
    ctx.load_cert_chain(str(files.cert), str(files.key))
    return ctx


@dataclass
class FloorResult:
    what: str
    n: int
    seconds: float
    errors: int
    error_sample: str = ""

    @property
    def rate(self) -> float:
        return self.n / self.seconds if self.seconds else float("nan")

    def summary(self) -> str:
        errors = f", {self.errors} errors ({self.error_sample})" if self.errors else ""
        return f"{self.what}: {self.n} in {self.seconds:.2f}s = {self.rate:.0f}/s{errors}"


async def _bounded(
    n: int, concurrency: int, one: Callable[[int], Awaitable[None]]
) -> tuple[float, int, str]:
    slots = asyncio.Semaphore(concurrency)
    errors = 0
    sample = ""

    async def run(i: int) -> None:
        nonlocal errors, sample
        async with slots:
            try:
                await one(i)
            except (OSError, ssl.SSLError, asyncio.IncompleteReadError, TimeoutError) as e:
                errors += 1
                sample = sample or repr(e)[:200]

    started = time.monotonic()
    await asyncio.gather(*(run(i) for i in range(n)))
    return time.monotonic() - started, errors, sample


def _contexts(files: Sequence[DeviceFiles]) -> list[ssl.SSLContext]:
    # One context per device, as each agent has (built before timing).
    return [device_tls(f) for f in files]


async def https_connect_floor(
    port: int, files: Sequence[DeviceFiles], concurrency: int = 256
) -> FloorResult:
    """N fresh TLS connections (client certificate presented) + ``GET /healthz``, close."""
    contexts = await asyncio.to_thread(_contexts, files)
    request = f"GET /healthz HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n"

    async def one(i: int) -> None:
        async with asyncio.timeout(60):
            reader, writer = await asyncio.open_connection(
                HOST, port, ssl=contexts[i], server_hostname=HOST
            )
            try:
                writer.write(request.encode())
                head = await reader.readuntil(b"\r\n\r\n")
                if head[9:12] != b"200":
                    raise OSError(f"healthz answered {head[:12]!r}")
                await reader.read()
            finally:
                writer.close()
                with contextlib.suppress(OSError, ssl.SSLError):
                    await writer.wait_closed()

    seconds, errors, sample = await _bounded(len(files), concurrency, one)
    return FloorResult("HTTPS TLS connect + GET /healthz", len(files), seconds, errors, sample)


@dataclass
class MqttConn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    device_id: str


async def mqtt_connect_floor(
    port: int,
    files: Sequence[DeviceFiles],
    concurrency: int = 256,
    keep: bool = False,
    subscribe: bool = True,
) -> tuple[FloorResult, list[MqttConn]]:
    """N TLS connections to the broker with the devices' certificates, each MQTT CONNECT
    (client id = device id, clean session) → CONNACK, SUBSCRIBE its nudge topic → SUBACK;
    all held open until the last is up. With ``keep`` the connections are returned open."""
    from registration.desired import nudge_topic

    contexts = await asyncio.to_thread(_contexts, files)
    conns: list[MqttConn | None] = [None] * len(files)

    async def one(i: int) -> None:
        device_id = files[i].device_id
        async with asyncio.timeout(60):
            reader, writer = await asyncio.open_connection(
                HOST, port, ssl=contexts[i], server_hostname=HOST
            )
            writer.write(mqtt_connect_packet(device_id))
            kind, body = await read_mqtt_packet(reader)
            if kind >> 4 != 2 or body[1:2] != b"\x00":
                writer.close()
                raise OSError(f"CONNACK {kind:#x} {body!r}")
            if subscribe:
                writer.write(mqtt_subscribe_packet(1, nudge_topic(device_id)))
            while subscribe:  # a retained nudge may come before or after the SUBACK
                kind, body = await read_mqtt_packet(reader)
                if kind >> 4 == 3:  # PUBLISH (retained nudge)
                    ack_publish(writer, kind, body)
                    continue
                if kind >> 4 == 9:
                    if body[2:3] == b"\x80":
                        raise OSError("SUBACK refused")
                    break
            conns[i] = MqttConn(reader, writer, device_id)

    seconds, errors, sample = await _bounded(len(files), concurrency, one)
    what = "MQTT TLS connect + CONNECT" + (" + SUBSCRIBE" if subscribe else "")
    result = FloorResult(what, len(files), seconds, errors, sample)
    opened = [c for c in conns if c is not None]
    if not keep:
        await close_mqtt(opened)
        opened = []
    return result, opened


async def close_mqtt(conns: Sequence[MqttConn]) -> None:
    for c in conns:
        with contextlib.suppress(OSError, RuntimeError):
            c.writer.write(MQTT_DISCONNECT)
            c.writer.close()
    for c in conns:
        with contextlib.suppress(OSError, ssl.SSLError, RuntimeError):
            await c.writer.wait_closed()


async def mqtt_exchange_floor(conns: Sequence[MqttConn]) -> FloorResult:
    """Over connections already open (not timed, and not yet subscribed): each device
    subscribes to its nudge topic and gets the retained nudge the server published for it (a
    delivery from the broker), and publishes its presence, QoS 1 and retained as the agent
    does (a publish to the broker, which passes it on to the server's channel). Timed until
    every device has both."""
    from registration.desired import Presence, nudge_topic, presence_topic

    payload = Presence(online=True).model_dump_json().encode()

    async def one(i: int) -> None:
        c = conns[i]
        async with asyncio.timeout(120):
            c.writer.write(mqtt_subscribe_packet(2, nudge_topic(c.device_id)))
            c.writer.write(
                mqtt_publish_packet(presence_topic(c.device_id), payload, 3, retain=True)
            )
            got_nudge = got_suback = got_puback = False
            while not (got_nudge and got_suback and got_puback):
                kind, body = await read_mqtt_packet(c.reader)
                if kind >> 4 == 3:
                    got_nudge = True
                    ack_publish(c.writer, kind, body)
                elif kind >> 4 == 9:
                    got_suback = True
                elif kind >> 4 == 4:
                    got_puback = True

    seconds, errors, sample = await _bounded(len(conns), len(conns) or 1, one)
    return FloorResult(
        "MQTT exchange (retained nudge in + presence out, QoS 1)",
        len(conns),
        seconds,
        errors,
        sample,
    )
