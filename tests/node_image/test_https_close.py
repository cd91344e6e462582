"""The agent's HTTPS client and its kept-alive connection: a request still running in its
thread when the client is closed (the agent stopping for a reboot, a new certificate) must not
keep its connection afterwards. Found by the per-test garbage collection: a reboot test left
an unclosed TLS socket behind."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

from node_image.agent.transport import Https

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


@dataclass
class HeldServer:
    """A plain HTTP/1.1 server on 127.0.0.1 that answers each request on one connection only
    when ``release`` is set, then tells whether the client closed that connection."""

    port: int = 0
    got_request: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    accepted: int = 0
    client_closed: bool | None = None


@contextmanager
def held_server(answers: int) -> Iterator[HeldServer]:
    state = HeldServer()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    state.port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        state.accepted += 1
        with conn:
            conn.settimeout(5)
            for _ in range(answers):
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(4096)
                state.got_request.set()
                state.release.wait(10)
                conn.sendall(ANSWER)
            try:
                state.client_closed = conn.recv(1) == b""
            except TimeoutError:
                state.client_closed = False

    server = threading.Thread(target=serve, name="held-http-server")
    server.start()
    try:
        yield state
    finally:
        state.release.set()
        server.join(15)
        listener.close()


def client(port: int) -> Https:
    return Https(f"http://127.0.0.1:{port}", ssl.create_default_context(), 10, plain=True)


def test_a_request_running_when_the_client_closes_closes_its_connection() -> None:
    with held_server(answers=1) as server, ThreadPoolExecutor(1) as pool:
        https = client(server.port)
        running = pool.submit(https.request, "GET", "/spec")
        assert server.got_request.wait(10)
        https.close()  # the agent stops while the request is in its thread
        server.release.set()
        assert running.result(10).status == 200
    assert https._conn is None  # noqa: SLF001 - nothing kept after close
    assert server.client_closed is True


def test_requests_without_a_close_share_one_kept_alive_connection() -> None:
    with held_server(answers=2) as server:
        server.release.set()
        https = client(server.port)
        assert https.request("GET", "/spec").status == 200
        assert https.request("GET", "/spec").status == 200
        https.close()
    assert server.accepted == 1
    assert server.client_closed is True
