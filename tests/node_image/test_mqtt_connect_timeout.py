"""An MQTT connect that fails or is cancelled lets go of its TLS socket, and a late
acknowledgement is no error (the agent's client and the server's:
``registration.mqtt.ClosingClient``).

aiomqtt raises on the timeout but leaves paho's socket open (paho closes it only when it
reads an error or the broker's close), so every timed-out connect of a device on a bad link
kept a socket and its file descriptor until the garbage collector found the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aiomqtt
import pytest

from node_image.agent.mqtt import MqttClient
from registration import identity
from registration.mqtt import ClosingClient


def broker_tls(tmp_path: Path) -> ssl.SSLContext:
    """A server context whose CA is written to ``tmp_path/ca.pem``."""
    ca = identity.CertificateAuthority.create("silent broker CA")
    key = identity.generate_key()
    (tmp_path / "broker.pem").write_bytes(identity.cert_to_pem(ca.issue_server(key, ["127.0.0.1"])))
    (tmp_path / "broker-key.pem").write_bytes(identity.key_to_pem(key))
    (tmp_path / "ca.pem").write_bytes(identity.cert_to_pem(ca.cert))
    serving = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    serving.load_cert_chain(tmp_path / "broker.pem", tmp_path / "broker-key.pem")
    return serving


def client_to(
    tmp_path: Path, port: int, name: str, timeout: float, cls: type[ClosingClient] = ClosingClient
) -> ClosingClient:
    return cls(
        "127.0.0.1",
        port,
        identifier=name,
        tls_context=ssl.create_default_context(cafile=str(tmp_path / "ca.pem")),
        timeout=timeout,
    )


async def closed(client: ClosingClient) -> bool:
    """The socket closes on the loop, soon after the connect gave up."""
    for _ in range(100):
        if client._client.socket() is None:
            return True
        await asyncio.sleep(0.05)
    return False


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Accepted = list[asyncio.StreamWriter]


@contextlib.asynccontextmanager
async def tls_broker(tmp_path: Path, handle: Handler) -> AsyncIterator[tuple[int, Accepted]]:
    """A TLS listener on 127.0.0.1 whose connections ``handle`` serves: its port, and the
    connections it accepted. Packets here are short: their remaining length is one byte."""
    serving = broker_tls(tmp_path)
    accepted: Accepted = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        try:
            await handle(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            return  # the client went

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=serving)
    try:
        yield server.sockets[0].getsockname()[1], accepted
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def connack(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads the CONNECT and accepts it."""
    _, length = await reader.readexactly(2)
    await reader.readexactly(length)
    writer.write(b"\x20\x02\x00\x00")
    await writer.drain()


class HeldHandshake:
    """A listener (its own thread) that accepts one connection, then holds the TLS handshake
    until :meth:`release`: the client's connect thread is still connecting meanwhile."""

    def __init__(self, tmp_path: Path) -> None:
        self._serving = broker_tls(tmp_path)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.accepted, self._released = threading.Event(), threading.Event()
        self.held: list[ssl.SSLSocket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        conn, _ = self._listener.accept()
        self.accepted.set()
        self._released.wait(30)
        self.held.append(self._serving.wrap_socket(conn, server_side=True))

    def release(self) -> None:
        self._released.set()

    def handshake_done(self, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while not self.held and time.monotonic() < deadline:
            time.sleep(0.05)
        return bool(self.held)


@contextlib.contextmanager
def held_handshake(tmp_path: Path) -> Iterator[HeldHandshake]:
    broker = HeldHandshake(tmp_path)
    broker._thread.start()
    try:
        yield broker
    finally:
        broker.release()
        broker._thread.join(10)
        broker._listener.close()
        for conn in broker.held:
            conn.close()


async def connect_then_cancel(client: ClosingClient, broker: HeldHandshake) -> None:
    """Starts the connect, and cancels it once the broker has accepted (the connect's thread
    is then inside the TLS handshake)."""

    async def connect() -> None:
        async with client:
            pass

    task = asyncio.create_task(connect())
    assert await asyncio.to_thread(broker.accepted.wait, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("client_class", [MqttClient, ClosingClient])
async def test_a_connect_that_times_out_closes_its_socket(
    tmp_path: Path, client_class: type[ClosingClient]
) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # TLS done, the CONNECT read and never answered

    async with tls_broker(tmp_path, silent) as (port, accepted):
        client = client_to(tmp_path, port, "dev-silent", 1, client_class)
        with pytest.raises(aiomqtt.MqttError, match="timed out"):
            async with client:
                pass
        assert accepted, "the client never connected"
        assert await closed(client)  # closed, not left to the garbage collector


async def test_a_connect_cancelled_in_its_thread_closes_the_socket_once_connected(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The connect runs in an executor thread that a cancel does not stop: it goes on to open
    the socket and ask the loop to watch it. The close must come after that, or the loop
    watches a closed (or reused) descriptor."""
    caplog.set_level(logging.ERROR, logger="asyncio")
    with held_handshake(tmp_path) as broker:
        client = client_to(tmp_path, broker.port, "dev-cancelled", 30)
        await connect_then_cancel(client, broker)
        broker.release()  # the handshake completes; paho sends CONNECT from the thread
        assert await asyncio.to_thread(broker.handshake_done), "the handshake never completed"
        assert await asyncio.to_thread(client._connect_returned.wait, 10)
        assert await closed(client)
        await asyncio.sleep(0.2)  # any stale reader or writer callback would run now
        assert not [r for r in caplog.records if r.name == "asyncio"], caplog.text


def test_a_cancelled_connect_whose_loop_stopped_closes_its_socket_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop that should run the close stopped (its owner, e.g. a test, ended) before the
    connect's thread returned: nothing watches the socket, so the close happens off the loop."""
    monkeypatch.setattr("registration.mqtt.CLOSE_GRACE", 0.2)
    loop = asyncio.new_event_loop()
    try:
        with held_handshake(tmp_path) as broker:

            async def cancelled() -> ClosingClient:
                client = client_to(tmp_path, broker.port, "dev-stopped", 30)
                await connect_then_cancel(client, broker)
                return client

            client = loop.run_until_complete(cancelled())  # then the loop stops
            broker.release()
            assert broker.handshake_done(), "the handshake never completed"
            assert client._connect_returned.wait(10)

            def socket_closed() -> bool:
                sock = client._client.socket()
                return sock is None or sock.fileno() == -1

            deadline = time.monotonic() + 5
            while not socket_closed() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert socket_closed(), client._client.socket()
    finally:
        loop.close()


async def test_an_acknowledgement_after_its_caller_gave_up_is_not_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A SUBACK that comes after the subscribe timed out (a slow link, a loaded broker): aiomqtt
    logged it as an error with a traceback; the session goes on."""

    async def slow_suback(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await connack(reader, writer)
        while True:
            first, length = await reader.readexactly(2)
            body = await reader.readexactly(length)
            if first >> 4 == 8:  # SUBSCRIBE: acknowledged late, granted QoS 1
                await asyncio.sleep(1.5)
                writer.write(b"\x90\x03" + body[:2] + b"\x01")
            elif first >> 4 == 12:  # PINGREQ
                writer.write(b"\xd0\x00")
            await writer.drain()

    caplog.set_level(logging.INFO)
    async with tls_broker(tmp_path, slow_suback) as (port, _):
        async with client_to(tmp_path, port, "dev-late", 5) as client:
            with pytest.raises(aiomqtt.MqttError, match="timed out"):
                await client.subscribe("corral/devices/dev-late/nudge", qos=1, timeout=0.5)
            await asyncio.sleep(2)  # the SUBACK arrives
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, caplog.text
    assert "SUBACK 1 came after its caller gave up" in caplog.text


async def test_a_connection_lost_before_the_loop_watches_its_write_is_not_watched(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A publish asks the loop (through ``call_soon_threadsafe``) to watch the socket for
    writing; the connection is lost in the same loop pass (paho read the broker's close and
    closed the socket). aiomqtt's request then ran on the closed descriptor: "Bad file
    descriptor" from ``add_writer`` in ``corral demo``, or another connection's socket when
    the number was reused."""

    async def accepting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await connack(reader, writer)
        await reader.read()

    caplog.set_level(logging.ERROR, logger="asyncio")
    async with tls_broker(tmp_path, accepting) as (port, _):
        client = client_to(tmp_path, port, "dev-lost", 5)
        await client.__aenter__()
        try:
            paho = client._client
            paho.publish("corral/devices/dev-lost/status", b"{}", qos=1)  # write requested
            paho._sock_close()  # the connection lost before the loop runs the request
            await asyncio.sleep(0.3)
            assert not [r for r in caplog.records if r.name == "asyncio"], caplog.text
        finally:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.__aexit__(None, None, None)


async def test_a_disconnect_the_broker_never_takes_still_closes_the_socket(
    tmp_path: Path,
) -> None:
    """The broker stops reading (loaded, or its link died): the queued publishes fill the
    socket, the DISCONNECT never goes out, and aiomqtt's exit times out, leaving paho's
    socket open until the garbage collector found the client."""

    async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await connack(reader, writer)
        await asyncio.sleep(60)  # reads nothing more

    async with tls_broker(tmp_path, deaf) as (port, _):
        client = client_to(tmp_path, port, "dev-deaf", 1)
        with pytest.raises(aiomqtt.MqttError, match="timed out"):
            async with client:
                for _ in range(400):  # 25 MB: more than both sides' socket buffers hold
                    client._client.publish("corral/devices/dev-deaf/status", bytes(65536))
        assert await closed(client)
