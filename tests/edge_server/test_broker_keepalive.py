"""The keepalive the embedded broker enforces (amqtt alone never does), on both brokers."""

from __future__ import annotations

import asyncio
import signal

from registration.desired import nudge_topic, presence_topic
from tests.edge_server.test_broker import (  # noqa: F401 - fixtures used by name
    SERVER,
    A,
    Harness,
    broker,
    ca,
    certs,
    receive,
)


async def test_a_client_silent_past_its_keepalive_is_dropped_and_its_will_sent(
    broker: Harness,  # noqa: F811 - the fixture imported above
) -> None:
    """A frozen client (SIGSTOP: its socket stays open, it sends nothing) is closed after
    1.5 × its keepalive, so its will marks it offline. amqtt alone never closed it."""
    c = broker.certs
    argv = broker.sub(c[A], [nudge_topic(A)], wait=60)
    argv += ["-k", "5", "--will-topic", presence_topic(A), "--will-payload", "gone"]
    argv += ["--will-qos", "1"]
    async with broker.client(c[SERVER]) as server:
        await server.subscribe(presence_topic(A), qos=1)
        proc = await asyncio.create_subprocess_exec(*argv)
        try:
            await asyncio.sleep(1)  # connected
            proc.send_signal(signal.SIGSTOP)
            # Without the keepalive check the will never comes; 20 s leaves a loaded machine
            # room over the 7.5 s the broker waits.
            message = await receive(server, presence_topic(A), seconds=20)
            assert message.payload == b"gone"
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
