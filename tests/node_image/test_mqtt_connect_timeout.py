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


@pytest.mark.parametrize("client_class", [MqttClient, ClosingClient])
async def test_a_connect_that_times_out_closes_its_socket(
    tmp_path: Path, client_class: type[ClosingClient]
) -> None:
    serving = broker_tls(tmp_path)
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # TLS done, the CONNECT read and never answered

    server = await asyncio.start_server(silent, "127.0.0.1", 0, ssl=serving)
    port = server.sockets[0].getsockname()[1]
    client = client_to(tmp_path, port, "dev-silent", 1, client_class)
    try:
        with pytest.raises(aiomqtt.MqttError, match="timed out"):
            async with client:
                pass
        assert held, "the client never connected"
        assert await closed(client)  # closed, not left to the garbage collector
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_connect_cancelled_in_its_thread_closes_the_socket_once_connected(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The connect runs in an executor thread that a cancel does not stop: it goes on to open
    the socket and ask the loop to watch it. The close must come after that, or the loop
    watches a closed (or reused) descriptor."""
    serving = broker_tls(tmp_path)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    accepted, release, held = threading.Event(), threading.Event(), []

    def broker() -> None:  # accepts, then holds the TLS handshake until released
        conn, _ = listener.accept()
        accepted.set()
        release.wait(30)
        held.append(serving.wrap_socket(conn, server_side=True))

    thread = threading.Thread(target=broker, daemon=True)
    thread.start()
    client = client_to(tmp_path, port, "dev-cancelled", 30)

    async def connect() -> None:
        async with client:
            pass

    caplog.set_level(logging.ERROR, logger="asyncio")
    try:
        task = asyncio.create_task(connect())
        assert await asyncio.to_thread(accepted.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()  # the handshake completes; paho sends CONNECT from the thread
        for _ in range(100):
            if held:
                break
            await asyncio.sleep(0.05)
        assert held, "the broker never completed the handshake"
        await asyncio.to_thread(client._connect_returned.wait, 10)
        assert await closed(client)
        await asyncio.sleep(0.2)  # any stale reader or writer callback would run now
        assert not [r for r in caplog.records if r.name == "asyncio"], caplog.text
    finally:
        release.set()
        thread.join(10)
        listener.close()
        for conn in held:
            conn.close()


def test_a_cancelled_connect_whose_loop_stopped_closes_its_socket_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop that should run the close stopped (its owner, e.g. a test, ended) before the
    connect's thread returned: nothing watches the socket, so the close happens off the loop."""
    monkeypatch.setattr("registration.mqtt.CLOSE_GRACE", 0.2)
    serving = broker_tls(tmp_path)
    listener = socket.create_server(("127.0.0.1", 0))
    accepted, release, held = threading.Event(), threading.Event(), []

    def broker() -> None:
        conn, _ = listener.accept()
        accepted.set()
        release.wait(30)
        held.append(serving.wrap_socket(conn, server_side=True))

    thread = threading.Thread(target=broker, daemon=True)
    thread.start()
    loop = asyncio.new_event_loop()
    try:

        async def connect_then_cancel() -> ClosingClient:
            client = client_to(tmp_path, listener.getsockname()[1], "dev-stopped", 30)

            async def connect() -> None:
                async with client:
                    pass

            task = asyncio.create_task(connect())
            assert await asyncio.to_thread(accepted.wait, 10)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return client

        client = loop.run_until_complete(connect_then_cancel())  # then the loop stops
        release.set()
        assert client._connect_returned.wait(10)
        for _ in range(100):
            sock = client._client.socket()
            if held and (sock is None or sock.fileno() == -1):
                break
            time.sleep(0.05)
        assert held, "the broker never completed the handshake"
        sock = client._client.socket()
        assert sock is None or sock.fileno() == -1, sock
    finally:
        release.set()
        thread.join(10)
        listener.close()
        for conn in held:
            conn.close()
        loop.close()


async def test_an_acknowledgement_after_its_caller_gave_up_is_not_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A SUBACK that comes after the subscribe timed out (a slow link, a loaded broker): aiomqtt
    logged it as an error with a traceback; the session goes on."""
    serving = broker_tls(tmp_path)
    writers: list[asyncio.StreamWriter] = []

    async def slow_broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        try:
            while True:  # packets here are short: their remaining length is one byte
                first, length = await reader.readexactly(2)
                body = await reader.readexactly(length)
                if first >> 4 == 1:  # CONNECT: accepted
                    writer.write(b"\x20\x02\x00\x00")
                elif first >> 4 == 8:  # SUBSCRIBE: acknowledged late, granted QoS 1
                    await asyncio.sleep(1.5)
                    writer.write(b"\x90\x03" + body[:2] + b"\x01")
                elif first >> 4 == 12:  # PINGREQ
                    writer.write(b"\xd0\x00")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return  # the client went

    server = await asyncio.start_server(slow_broker, "127.0.0.1", 0, ssl=serving)
    client = client_to(tmp_path, server.sockets[0].getsockname()[1], "dev-late", 5)
    caplog.set_level(logging.INFO)
    try:
        async with client:
            with pytest.raises(aiomqtt.MqttError, match="timed out"):
                await client.subscribe("corral/devices/dev-late/nudge", qos=1, timeout=0.5)
            await asyncio.sleep(2)  # the SUBACK arrives
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert not errors, caplog.text
        assert "SUBACK 1 came after its subscribe gave up" in caplog.text
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_connection_lost_before_the_loop_watches_its_write_is_not_watched(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A publish asks the loop (through ``call_soon_threadsafe``) to watch the socket for
    writing; the connection is lost in the same loop pass (paho read the broker's close and
    closed the socket). aiomqtt's request then ran on the closed descriptor: "Bad file
    descriptor" from ``add_writer`` in ``corral demo``, or another connection's socket when
    the number was reused."""
    serving = broker_tls(tmp_path)
    writers: list[asyncio.StreamWriter] = []

    async def accepting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        try:
            first, length = await reader.readexactly(2)
            await reader.readexactly(length)
            writer.write(b"\x20\x02\x00\x00")  # CONNACK, accepted
            await writer.drain()
            await reader.read()  # then nothing more
        except (asyncio.IncompleteReadError, ConnectionError):
            return

    server = await asyncio.start_server(accepting, "127.0.0.1", 0, ssl=serving)
    client = client_to(tmp_path, server.sockets[0].getsockname()[1], "dev-lost", 5)
    caplog.set_level(logging.ERROR, logger="asyncio")
    try:
        await client.__aenter__()
        paho = client._client
        paho.publish("corral/devices/dev-lost/status", b"{}", qos=1)  # the write is requested
        paho._sock_close()  # the connection lost before the loop runs the request
        await asyncio.sleep(0.3)
        assert not [r for r in caplog.records if r.name == "asyncio"], caplog.text
    finally:
        with contextlib.suppress(aiomqtt.MqttError):
            await client.__aexit__(None, None, None)
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()
