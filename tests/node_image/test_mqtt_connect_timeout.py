"""An MQTT connect whose CONNACK never comes: the client lets go of its TLS socket (the
agent's, and the server's: ``registration.mqtt.ClosingClient``).

aiomqtt raises on the timeout but leaves paho's socket open (paho closes it only when it
reads an error or the broker's close), so every timed-out connect of a device on a bad link
kept a socket and its file descriptor until the garbage collector found the client.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import aiomqtt
import pytest

from node_image.agent.transport import MqttClient
from registration import identity
from registration.mqtt import ClosingClient


@pytest.mark.parametrize("client_class", [MqttClient, ClosingClient])
async def test_a_connect_that_times_out_closes_its_socket(
    tmp_path: Path, client_class: type[ClosingClient]
) -> None:
    ca = identity.CertificateAuthority.create("silent broker CA")
    key = identity.generate_key()
    (tmp_path / "broker.pem").write_bytes(identity.cert_to_pem(ca.issue_server(key, ["127.0.0.1"])))
    (tmp_path / "broker-key.pem").write_bytes(identity.key_to_pem(key))
    (tmp_path / "ca.pem").write_bytes(identity.cert_to_pem(ca.cert))
    serving = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    serving.load_cert_chain(tmp_path / "broker.pem", tmp_path / "broker-key.pem")
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
