"""The MQTT client that the server and the agent both use: aiomqtt's, closing its socket
when a connect fails.

aiomqtt raises when the CONNACK does not come in time, and stops waiting when the connect
is cancelled, but leaves paho's socket open: paho closes it only when it reads an error or
the broker's close. Each such connect kept a TLS socket and its descriptor until the garbage
collector found the client: on a device with a bad link, in the server's reconnect and
session take-over, and in a test suite whose exit found one.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Self

import aiomqtt

#: How long a cancelled connect's close waits for the event loop to run it.
CLOSE_GRACE = 10.0


class ClosingClient(aiomqtt.Client):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        #: Set when the blocking connect (aiomqtt runs it in an executor thread) returns.
        self._connect_returned = threading.Event()

    def _client_connect(self) -> None:
        try:
            super()._client_connect()
        finally:
            self._connect_returned.set()

    async def __aenter__(self) -> Self:
        self._connect_returned.clear()
        try:
            return await super().__aenter__()
        except BaseException:
            self._close_socket(asyncio.get_running_loop())
            raise

    def _close_socket(self, loop: asyncio.AbstractEventLoop) -> None:
        """paho's own close, which also unregisters the socket from the loop. Not while the
        connect still runs in its thread (a cancel): it opens the socket and asks the loop
        to watch it, so the close waits for it and comes after those requests."""
        if self._connect_returned.is_set():
            self._client._sock_close()  # noqa: SLF001
            return

        def after_connect() -> None:
            self._connect_returned.wait()
            closed = threading.Event()

            def close() -> None:
                if not closed.is_set():
                    self._client._sock_close()  # noqa: SLF001
                closed.set()

            try:
                loop.call_soon_threadsafe(close)
            except RuntimeError:  # the loop has closed: nothing watches the socket
                close()
                return
            if not closed.wait(CLOSE_GRACE):
                # The loop stopped without running it (its owner ended): close the socket
                # itself; a loop that no longer runs watches nothing.
                closed.set()
                if (sock := self._client.socket()) is not None:
                    sock.close()

        threading.Thread(target=after_connect, name="mqtt-close", daemon=True).start()
