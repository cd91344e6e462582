"""An MQTT connect whose CONNACK never comes: the client lets go of its TLS socket (the
agent's, and the server's: ``registration.mqtt.ClosingClient``).

aiomqtt raises on the timeout but leaves paho's socket open (paho closes it only when it
reads an error or the broker's close), so every timed-out connect of a device on a bad link
kept a socket and its file descriptor until the garbage collector found the client.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
from pathlib import Path

import aiomqtt
import pytest

from node_image.agent.transport import MqttClient
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
    client = client_class(
        "127.0.0.1",
        port,
        identifier="dev-silent",
        tls_context=ssl.create_default_context(cafile=str(tmp_path / "ca.pem")),
        timeout=1,
    )
    try:
        with pytest.raises(aiomqtt.MqttError, match="timed out"):
            async with client:
                pass
        assert held, "the client never connected"
        assert client._client.socket() is None  # closed, not left to the garbage collector
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
    client = ClosingClient(
        "127.0.0.1",
        port,
        identifier="dev-cancelled",
        tls_context=ssl.create_default_context(cafile=str(tmp_path / "ca.pem")),
        timeout=30,
    )

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
            if held and client._client.socket() is None:
                break
            await asyncio.sleep(0.05)
        assert held, "the broker never completed the handshake"
        assert client._client.socket() is None
        await asyncio.sleep(0.2)  # any stale reader or writer callback would run now
        assert not [r for r in caplog.records if r.name == "asyncio"], caplog.text
    finally:
        release.set()
        thread.join(10)
        listener.close()
        for conn in held:
            conn.close()
