"""The network-fault lab itself, shown with real traffic between its namespaces."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.netns import Host, Lab, leftovers, sweep_leftovers

pytestmark = pytest.mark.slow

PY = sys.executable
REPO = Path(__file__).resolve().parents[2]
HTTP_PORT = 8080
ECHO_PORT = 7007
CLOSED_PORT = 7008

ECHO_SERVER = """
import socket, sys, threading
srv = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
def serve(conn):
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)
while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""

# One long-lived connection across a cut: each line on stdin moves it one step on.
ECHO_CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.sendall(b"before")
print("connected" if s.recv(100) == b"before" else "bad echo", flush=True)
sys.stdin.readline()  # the link is cut now
s.sendall(b"during")
s.settimeout(1.5)
try:
    data = s.recv(100)
    print(f"got {data!r}", flush=True)
except TimeoutError:
    print("timeout", flush=True)
except OSError as err:
    print(f"error {err!r}", flush=True)
sys.stdin.readline()  # the link is back
s.settimeout(30)
try:
    data = s.recv(100)
    print("recovered" if data == b"during" else f"got {data!r}", flush=True)
except OSError as err:
    print(f"error {err!r}", flush=True)
"""

HTTP_GET = """
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=10) as response:
    sys.stdout.write(response.read().decode())
"""


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab(2) as the_lab:
        yield the_lab


def start_echo_server(host: Host) -> subprocess.Popen[str]:
    proc = host.popen(
        [PY, "-I", "-c", ECHO_SERVER, host.address, str(ECHO_PORT)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    return proc.stdout.readline().strip()


def tell(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.write("\n")
    proc.stdin.flush()


def gone(pid: int, timeout: float = 10.0) -> bool:
    """Whether process ``pid`` has exited (a zombie counts as exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def root_namespace_state() -> str:
    return "\n".join(
        subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        for argv in (["ip", "-o", "link"], ["ip", "-o", "addr"], ["ip", "route"])
    )


def test_agents_reach_server_across_the_bridge(lab: Lab, tmp_path: Path) -> None:
    (tmp_path / "hello.txt").write_text("hello from the server namespace")
    server = lab.server
    server.popen(
        [PY, "-m", "http.server", "--bind", server.address, str(HTTP_PORT)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server.wait_tcp(server.address, HTTP_PORT)
    url = f"http://{server.address}:{HTTP_PORT}/hello.txt"
    for agent in lab.agents:
        fetched = agent.run([PY, "-I", "-c", HTTP_GET, url], capture_output=True, text=True)
        assert fetched.stdout == "hello from the server namespace"
        assert agent.ping(server.address, count=5).loss == 0
    # Agents see each other too, and nothing of the lab is in the root namespace.
    assert lab.agents[0].ping(lab.agents[1].address, count=5).loss == 0
    net = lab.subnet.network_address
    assert [h.address for h in lab.hosts] == [str(net + n) for n in (1, 10, 11)]
    root = root_namespace_state()
    assert lab.prefix not in root
    assert str(net).removesuffix("0") not in root  # e.g. "10.237.58."


def test_link_down_times_out_and_link_up_restores(lab: Lab) -> None:
    server, agent = lab.server, lab.agents[0]
    start_echo_server(server)
    assert agent.tcp_probe(server.address, ECHO_PORT) == "ok"
    assert agent.tcp_probe(server.address, CLOSED_PORT) == "refused"  # the probe tells RST apart
    client = agent.popen(
        [PY, "-I", "-c", ECHO_CLIENT, server.address, str(ECHO_PORT)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert line(client) == "connected"

    agent.link_down()
    # Longer than ARP's 3 s give-up time: still a timeout, neither refused nor unreachable.
    started = time.monotonic()
    assert agent.tcp_probe(server.address, ECHO_PORT, timeout=4) == "timeout"
    assert time.monotonic() - started >= 4
    assert agent.tcp_probe(server.address, CLOSED_PORT, timeout=1) == "timeout"
    # The other agent is not affected.
    assert lab.agents[1].tcp_probe(server.address, ECHO_PORT) == "ok"
    tell(client)
    assert line(client) == "timeout"  # the open connection gets silence, not a reset

    agent.link_up()
    tell(client)
    assert line(client) == "recovered"  # retransmission carries the same connection on
    assert agent.tcp_probe(server.address, ECHO_PORT) == "ok"
    assert client.wait(timeout=10) == 0


def test_drop_percent_loses_pings_and_clear_drop_restores(lab: Lab) -> None:
    agent, target = lab.agents[0], lab.server.address
    assert agent.ping(target).loss == 0

    agent.drop_percent(30, direction="out")  # requests only: about 30 % of pings lost
    one_way = agent.ping(target, count=200, interval=0.01, timeout=1)
    assert one_way.transmitted == 200
    assert 0.10 <= one_way.loss <= 0.50, one_way

    agent.drop_percent(30)  # both ways: a round trip survives with 0.7 * 0.7, about 51 % lost
    both_ways = agent.ping(target, count=200, interval=0.01, timeout=1)
    assert 0.35 <= both_ways.loss <= 0.67, both_ways
    tables = agent.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert f"table inet {lab.prefix}_drop" in tables
    assert lab.agents[1].ping(target, count=50).loss == 0  # only this host is lossy

    agent.clear_drop()
    assert agent.ping(target, count=200, interval=0.01, timeout=1).loss == 0
    tables = agent.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert lab.prefix not in tables
    agent.clear_drop()  # idempotent

    with pytest.raises(ValueError):
        agent.drop_percent(101)


class Boom(Exception):
    pass


@pytest.mark.parametrize("body_raises", [False, True], ids=["clean-exit", "body-raised"])
def test_teardown_removes_everything(body_raises: bool) -> None:
    lab = Lab(2, term_grace=1.0)
    try:
        with lab:
            assert (
                lab.prefix
                in subprocess.run(
                    ["ip", "netns", "list"], capture_output=True, text=True, check=True
                ).stdout
            )
            sleeper = lab.agents[0].popen(["sleep", "300"])
            stubborn = lab.server.popen(
                [PY, "-I", "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                 "signal.SIG_IGN); print('ready', flush=True); time.sleep(300)"],
                stdout=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            assert line(stubborn) == "ready"
            # A process the lab did not start, orphaned inside a namespace.
            orphan = lab.agents[1].run(
                ["sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True
            )
            orphan_pid = int(orphan.stdout)
            lab.agents[1].drop_percent(50)
            if body_raises:
                raise Boom("test body failed")
    except Boom:
        assert body_raises
    assert sleeper.returncode is not None
    assert stubborn.returncode is not None  # SIGTERM ignored: SIGKILLed
    assert gone(orphan_pid)
    assert leftovers(lab.prefix) == []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True)
    for listing in (netns.stdout, links.stdout, tables.stdout):
        assert lab.prefix not in listing


CRASHING_RUN = """
import subprocess, sys
from tests.e2e.netns import Lab
lab = Lab(1).__enter__()
lab.agents[0].popen(["sleep", "300"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
lab.agents[0].drop_percent(10)
print(lab.prefix, flush=True)
sys.stdin.read()  # until the test kills this process: no __exit__, no atexit
"""


def test_sweeper_removes_leftovers_of_a_crashed_run_only() -> None:
    owner = subprocess.Popen(
        [PY, "-c", CRASHING_RUN],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        prefix = line(owner)
        # While its owner runs, a lab is never swept (by us or by concurrent test runs).
        assert not any(prefix in item for item in sweep_leftovers())
        assert any(item.startswith("netns ") for item in leftovers(prefix))
        stray = subprocess.run(
            ["ip", "netns", "pids", f"{prefix}-a0"], capture_output=True, text=True, check=True
        )
        stray_pids = [int(pid) for pid in stray.stdout.split()]
        assert stray_pids  # the sleep, in its own session: it outlives its owner

        owner.kill()  # the crash
        owner.wait(timeout=10)

        with Lab(1, sweep=False) as live:
            removed = sweep_leftovers()
            assert not any(live.prefix in item for item in removed)  # its owner is running
            # (A concurrent test run may have swept the crashed lab first: same outcome.)
            assert leftovers(prefix) == []
            assert all(gone(pid) for pid in stray_pids)
            assert live.agents[0].ping(live.server.address, count=5).loss == 0
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait(timeout=10)
        for stream in (owner.stdin, owner.stdout):
            if stream is not None:
                stream.close()
        sweep_leftovers()
