"""The MQTT client that the server and the agent both use: aiomqtt's (pinned), with three
fixes of its socket handling.

- aiomqtt raises when the CONNACK (or the broker's close after a DISCONNECT) does not come
  in time, and stops waiting when the connect is cancelled, but leaves paho's socket open:
  paho closes it only when it reads an error or the broker's close. Each such client kept a
  TLS socket and its descriptor until the garbage collector found it: on a device with a
  bad link, in the server's reconnect and session take-over, and in a test suite whose exit
  found one.
- aiomqtt asks the loop to watch paho's socket through ``call_soon_threadsafe``: the request
  runs later, by when paho may have closed the socket (a lost connection read in the same
  loop pass as a publish), and the loop then watched a closed descriptor ("Bad file
  descriptor" from ``add_writer``) or one reused by another connection. Here a request runs
  only if its socket is still paho's.
- A SUBACK or UNSUBACK that comes after its caller gave up is logged at info, not as an
  error with a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Container
from typing import Any, Self

import aiomqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger(__name__)

#: How often a cancelled connect's close checks that the event loop still runs to do it.
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

    async def __aexit__(self, *exc_info: Any) -> None:  # noqa: ANN401
        """aiomqtt's disconnect, then the socket closed whatever happened: aiomqtt raises when
        the broker does not answer the DISCONNECT in time (a loaded broker, a dying link)
        and leaves the socket open, as it does when the wait is cancelled."""
        try:
            await super().__aexit__(*exc_info)
        finally:
            if self._client.socket() is not None:
                self._close_socket(asyncio.get_running_loop())

    def _close_socket(self, loop: asyncio.AbstractEventLoop) -> None:
        """paho's own close, which also unregisters the socket from the loop, run by the
        loop once the connect's thread has returned. That thread (still running after a
        cancel) opens the socket and posts to the loop the requests to watch it; the close
        is posted after them, so the loop never watches a closed or reused descriptor. If
        the loop stops without running it, nothing watches the socket: close it here."""
        lock, closed = threading.Lock(), threading.Event()

        def close(*, unwatched: bool = False) -> None:
            with lock:
                if closed.is_set():
                    return
                closed.set()
            if not unwatched:
                self._client._sock_close()  # noqa: SLF001
            elif (sock := self._client.socket()) is not None:
                sock.close()  # the loop's unregistering would fail on a stopped loop

        def after_connect() -> None:
            self._connect_returned.wait()
            try:
                loop.call_soon_threadsafe(close)
            except RuntimeError:  # the loop has closed
                close(unwatched=True)
                return
            while not closed.wait(CLOSE_GRACE):
                if not loop.is_running():
                    close(unwatched=True)
                    return

        threading.Thread(target=after_connect, name="mqtt-close", daemon=True).start()

    # The loop watches paho's socket only while it is paho's: aiomqtt's callbacks (2.x), with
    # the registration checked when the loop runs it rather than when paho asked for it.
    def _on_socket_open(self, client: Any, userdata: Any, sock: Any) -> None:  # noqa: ANN401
        def read() -> None:
            try:
                while True:
                    client.loop_read()
                    # loop_read does not always consume every decoded byte of an SSLSocket
                    pending = getattr(client._sock, "pending", None)  # noqa: SLF001
                    if pending is not None and pending() > 0:
                        continue
                    break
            except Exception as exc:  # noqa: BLE001 - the connection broke: end it
                if not self._disconnected.done():
                    self._disconnected.set_exception(exc)

        def watch() -> None:
            if client.socket() is sock:
                self._loop.add_reader(sock.fileno(), read)
                self._misc_task = self._loop.create_task(self._misc_loop())

        self._loop.call_soon_threadsafe(watch)

    def _on_socket_register_write(self, client: Any, userdata: Any, sock: Any) -> None:  # noqa: ANN401
        def write() -> None:
            try:
                client.loop_write()
            except Exception as exc:  # noqa: BLE001 - the connection broke: end it
                if not self._disconnected.done():
                    self._disconnected.set_exception(exc)

        def watch() -> None:
            if client.socket() is sock:
                self._loop.add_writer(sock.fileno(), write)

        self._loop.call_soon_threadsafe(watch)

    # A SUBACK or UNSUBACK after its caller stopped waiting (a timeout on a slow link, a
    # cancelled session) is expected: aiomqtt logs it as an error with a traceback.
    def _on_subscribe(
        self,
        client: Any,  # noqa: ANN401
        userdata: Any,  # noqa: ANN401
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None = None,
    ) -> None:
        if not _late("SUBACK", mid, self._pending_subscribes):
            super()._on_subscribe(client, userdata, mid, reason_codes, properties)

    def _on_unsubscribe(
        self,
        client: Any,  # noqa: ANN401
        userdata: Any,  # noqa: ANN401
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None = None,
    ) -> None:
        if not _late("UNSUBACK", mid, self._pending_unsubscribes):
            super()._on_unsubscribe(client, userdata, mid, reason_codes, properties)


def _late(packet: str, mid: int, pending: Container[int]) -> bool:
    """True (and said at info) when no call waits for this acknowledgement any more."""
    if mid in pending:
        return False
    log.info("%s %d came after its caller gave up", packet, mid)
    return True
