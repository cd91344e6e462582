"""Who holds a device's MQTT session, against a real server on both brokers: a second
connection with the same client id, another device's certificate under a borrowed client id,
and a revoked device's open session. Real clients only: aiomqtt and mosquitto_sub."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiomqtt
import pytest

from registration.desired import nudge_topic
from tests.edge_server.test_channel import registered
from tests.mqtt_support import HOST, client_tls, mosquitto_sub, mqtt_client, run_cli
from tests.support import Server

SERVER_ID = "corral-server"


@contextlib.asynccontextmanager
async def process(argv: list[str]) -> AsyncIterator[asyncio.subprocess.Process]:
    """A process whose stdout is line-buffered, killed on the way out whatever happened."""
    proc = await asyncio.create_subprocess_exec(
        "stdbuf", "-oL", *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.communicate()


def register(server: Server, tmp_path: Path, name: str) -> tuple[str, Path, Path]:
    """A registered device: its id, certificate and key."""
    device_id, (cert, key) = registered(server, tmp_path, name)
    return device_id, Path(cert), Path(key)


def change_spec(server: Server, device_id: str, content: str) -> int:
    """An operator override that changes the device's spec; its new generation."""
    body = {"config": [{"path": "/etc/corral-test", "content": content}]}
    response = server.api("PUT", f"/api/v1/devices/{device_id}/override", body)
    assert response.status_code == 200, response.text
    return int(response.json()["generation"])


def channel_connects(server: Server) -> int:
    return int(server.api("GET", "/api/v1/stats").json()["channel"]["connects"])


def sub_argv(server: Server, cert: Path, key: Path, topic: str, client_id: str) -> list[str]:
    """mosquitto_sub holding its connection: no -W, so it runs until killed or cut off."""
    argv = mosquitto_sub(server.mqtt_port, server.ca, cert, key, [topic], client_id=client_id)
    at = argv.index("-W")
    return argv[:at] + argv[at + 2 :]


async def read_until(
    proc: asyncio.subprocess.Process, predicate: Callable[[str], bool], seconds: float
) -> list[str]:
    """Lines of a process's output until ``predicate(line)``; all lines if it never holds."""
    assert proc.stdout is not None
    lines: list[str] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            while line := (await proc.stdout.readline()).decode():
                lines.append(line)
                if predicate(line):
                    break
    return lines


@contextlib.asynccontextmanager
async def device_client(
    server: Server, device_id: str, cert: Path, key: Path
) -> AsyncIterator[aiomqtt.Client]:
    """A device's persistent session, as the agent opens it (subscribed to its nudge)."""
    tls = await asyncio.to_thread(client_tls, server.ca, cert, key)
    client = mqtt_client(
        HOST,
        server.mqtt_port,
        identifier=device_id,
        tls_context=tls,
        clean_session=False,
        timeout=5,
    )
    await client.__aenter__()
    try:
        await client.subscribe(nudge_topic(device_id), qos=1)
        yield client
    finally:
        with contextlib.suppress(aiomqtt.MqttError):
            await client.__aexit__(None, None, None)


async def nudged(client: aiomqtt.Client, device_id: str, generation: int, seconds: float) -> bool:
    """Whether a nudge of ``generation`` (or later) arrives within ``seconds``."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                if message.topic.value == nudge_topic(device_id) and message.payload:
                    if json.loads(message.payload)["generation"] >= generation:
                        return True
    return False


async def test_a_reconnect_that_takes_over_its_own_session_still_gets_nudges(
    fleet_server: Server, tmp_path: Path
) -> None:
    """An agent whose old connection is still open connects again with its client id: the
    new connection must get the next nudge (amqtt's own take-over queued it forever)."""
    server = fleet_server
    device_id, cert, key = await asyncio.to_thread(register, server, tmp_path, "a")
    async with device_client(server, device_id, cert, key) as first:
        async with device_client(server, device_id, cert, key) as second:
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                async with asyncio.timeout(2):
                    async for _ in first.messages:  # until the broker cuts it off
                        pass
            generation = await asyncio.to_thread(change_spec, server, device_id, "v2")
            assert await nudged(second, device_id, generation, 10)
            generation = await asyncio.to_thread(change_spec, server, device_id, "v3")
            assert await nudged(second, device_id, generation, 10)


@pytest.mark.parametrize("broker", ["mosquitto"])
async def test_mosquitto_a_device_certificate_cannot_take_another_client_id(
    broker: str, tmp_path: Path
) -> None:
    """Device A's certificate under ``-i corral-server`` or ``-i <B>``: neither the server's
    channel nor device B is knocked off (the client id is the certificate's CN)."""
    from tests.conftest import make_server

    server = await asyncio.to_thread(make_server, tmp_path, broker=broker)
    try:
        _, a_cert, a_key = await asyncio.to_thread(register, server, tmp_path, "a")
        b, b_cert, b_key = await asyncio.to_thread(register, server, tmp_path, "b")
        connects = await asyncio.to_thread(channel_connects, server)
        async with process(sub_argv(server, b_cert, b_key, nudge_topic(b), b)) as held_b:
            await read_until(held_b, lambda s: nudge_topic(b) in s, 5)  # the retained nudge
            for borrowed in (SERVER_ID, b):
                for _ in range(3):
                    argv = mosquitto_sub(
                        server.mqtt_port,
                        server.ca,
                        a_cert,
                        a_key,
                        [nudge_topic(borrowed)],
                        client_id=borrowed,
                        wait=1,
                    )
                    await run_cli(argv)
            await asyncio.sleep(2)  # the channel would have reconnected after a kick
            assert await asyncio.to_thread(channel_connects, server) == connects
            assert held_b.returncode is None
            generation = await asyncio.to_thread(change_spec, server, b, "for-b")
            wanted = f'"generation":{generation}'
            lines = await read_until(held_b, lambda s: wanted in s, 10)
            assert any(wanted in s for s in lines), lines
    finally:
        await asyncio.to_thread(server.stop_all)
    log = await asyncio.to_thread(server.log)
    assert "Traceback" not in log, log[-4000:]


@pytest.mark.parametrize("action", ["delete", "reset"])
async def test_revoking_a_device_ends_its_live_session_and_it_cannot_reconnect(
    fleet_server: Server, tmp_path: Path, action: str
) -> None:
    server = fleet_server
    a, a_cert, a_key = await asyncio.to_thread(register, server, tmp_path, "a")
    argv = sub_argv(server, a_cert, a_key, nudge_topic(a), a) + ["-d"]
    async with process(argv) as held:
        got = await read_until(held, lambda s: "SUBACK" in s, 10)
        assert any("SUBACK" in s for s in got), got
        method, path = {
            "delete": ("DELETE", f"/api/v1/devices/{a}"),
            "reset": ("POST", f"/api/v1/devices/{a}/reset"),
        }[action]
        response = await asyncio.to_thread(server.api, method, path)
        assert response.status_code == 200, response.text
        revoked = time.monotonic()
        # Cut off, mosquitto_sub reconnects by itself; refused (revoked), it exits.
        after = await read_until(held, lambda s: False, 15)
        async with asyncio.timeout(5):
            await held.wait()
        assert time.monotonic() - revoked < 15
        assert not [s for s in after if "CONNACK" in s], after  # never connected again
        # A fresh connection with the certificate is refused too.
        fresh = await run_cli(
            mosquitto_sub(server.mqtt_port, server.ca, a_cert, a_key, [nudge_topic(a)])
        )
        assert fresh.returncode not in (0, 27), fresh
