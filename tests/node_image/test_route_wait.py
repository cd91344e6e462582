"""First boot starts the agent before the network is up (not after network-online.target):
it waits for a route to the server, then registers, instead of failing and backing off.

A real agent process in a lab namespace whose address is gone (DHCP not done yet): it waits,
says so, and goes on within a poll of the address coming back.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.e2e.netns import Lab

WAIT = """
import logging, sys
from node_image.agent import network
logging.basicConfig(level=logging.INFO, format="%(message)s")
limit = float(sys.argv[2]) if len(sys.argv) > 2 else None
print("routable" if network.wait_for_route(sys.argv[1], limit) else "gave up", flush=True)
"""


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab(1) as lab:
        yield lab


def test_the_agent_waits_for_a_route_to_the_server_then_goes_on(lab: Lab) -> None:
    agent = lab.agents[0]
    url = f"https://{lab.server.address}:8443/"
    prefix = lab.subnet.prefixlen
    agent.run(["ip", "address", "flush", "dev", agent.iface])
    proc = agent.popen(
        [sys.executable, "-c", WAIT, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        time.sleep(2.0)
        assert proc.poll() is None, proc.communicate()  # still waiting: no route
        agent.run(["ip", "address", "add", f"{agent.address}/{prefix}", "dev", agent.iface])
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert f"waiting for the network (no route to {lab.server.address}" in err, err
    assert "network up after" in err, err
    assert out.startswith("routable"), out


def test_a_routable_server_is_not_waited_for(lab: Lab) -> None:
    agent = lab.agents[0]
    result = agent.run(
        [sys.executable, "-c", WAIT, f"https://{lab.server.address}:8443/"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.startswith("routable"), result.stderr
    assert "waiting for the network" not in result.stderr


def test_a_registered_agent_gives_up_waiting_after_its_limit(lab: Lab) -> None:
    """A registered device with no network still starts its daemon (which retries)."""
    agent = lab.agents[0]
    agent.run(["ip", "address", "flush", "dev", agent.iface])
    result = agent.run(
        [sys.executable, "-c", WAIT, f"https://{lab.server.address}:8443/", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.startswith("gave up"), (result.stdout, result.stderr)
    assert "no network after 1s" in result.stderr, result.stderr
