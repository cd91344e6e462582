"""The MQTT client that the server and the agent both use: aiomqtt's, closing its socket
when a connect fails.

aiomqtt raises when the CONNACK does not come in time (or when the connect is cancelled)
but leaves paho's socket open: paho closes it only when it reads an error or the broker's
close. Each timed-out connect then kept a TLS socket and its descriptor until the garbage
collector found the client: on a device with a bad link, in the server's session take-over
and reconnect loops, and in a test suite whose exit found one such socket.
"""

from __future__ import annotations

from typing import Self

import aiomqtt


class ClosingClient(aiomqtt.Client):
    async def __aenter__(self) -> Self:
        try:
            return await super().__aenter__()
        except BaseException:
            # paho's own close also unregisters the socket from aiomqtt's loop callbacks.
            self._client._sock_close()  # noqa: SLF001
            raise
