from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from pathlib import Path

import pytest
from blockbuster import blockbuster_ctx

from tests.support import Server, free_port


@pytest.fixture(autouse=True)
def no_blocking_in_loop(request: pytest.FixtureRequest) -> Iterator[None]:
    """Any blocking call made by our packages inside a running event loop fails the test."""
    if not asyncio.iscoroutinefunction(getattr(request, "function", None)):
        yield
        return
    with blockbuster_ctx(["edge_server", "registration", "node_image"]):
        yield


@pytest.fixture(autouse=True)
def garbage_collected() -> Iterator[None]:
    """A full collection after each test: what a test left unclosed in a reference cycle (a
    socket, a file) warns in that test's teardown and fails it by name, not at the session's
    end, where pytest's last collection found a socket and could not say whose it was."""
    yield
    gc.collect()


def make_server(tmp_path: Path, broker: str = "embedded", **env: str) -> Server:
    server = Server(data_dir=tmp_path / "data", port=free_port(), env=env, broker=broker)
    try:
        server.start()
    except BaseException:
        server.stop_all()
        raise
    return server


@pytest.fixture(params=["embedded", "mosquitto"])
def fleet_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    """A server with the embedded broker, and again with a real Mosquitto (--mqtt-url)."""
    srv = make_server(tmp_path, broker=request.param)
    yield from _supervise(srv)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = make_server(tmp_path)
    yield from _supervise(srv)


@pytest.fixture
def lenient_server(tmp_path: Path) -> Iterator[Server]:
    """A server whose failure rate limit does not get in the way of load tests."""
    srv = make_server(tmp_path, CORRAL_REGISTER_FAILURES_PER_MINUTE="100000")
    yield from _supervise(srv)


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One lenient server for a whole module of independent checks."""
    srv = make_server(
        tmp_path_factory.mktemp("shared"), CORRAL_REGISTER_FAILURES_PER_MINUTE="100000"
    )
    yield from _supervise(srv)


def _supervise(srv: Server) -> Iterator[Server]:
    try:
        yield srv
    finally:
        srv.stop_all()
    problems = srv.problems()
    assert not problems, problems
