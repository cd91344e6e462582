"""The agent daemon against a real server (own process, real TLS; embedded and Mosquitto).

In-process agents run on a ``SimulatedHost`` in the test's event loop, under the guard that
fails any blocking call from our packages; one agent runs as a real ``corral-agent run``.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from node_image.agent import seed as seed_mod
from node_image.agent.daemon import Agent, AgentSettings
from node_image.host import SimulatedHost
from tests.support import Server, device, set_group, start_agent
from tests.waiting import wait_for, wait_until

WAIT = 30.0


@pytest.fixture
def server(fleet_server: Server) -> Server:
    """Every test here runs against the embedded broker and against Mosquitto."""
    return fleet_server


def write_seed(server: Server, path: Path, **labels: str) -> Path:
    token = server.create_token(labels=labels, max_uses=10)["token"]
    path.write_text(json.dumps({"server": server.url, "token": token, "labels": labels}))
    return path


def config(*files: tuple[str, str, int]) -> dict[str, Any]:
    return {"config": [{"path": p, "content": c, "mode": m} for p, c, m in files]}


def rootfs_file(host: SimulatedHost, path: str) -> Path:
    return host.rootfs / path.lstrip("/")


async def test_agent_registers_and_converges_to_its_group_and_follows_changes_by_nudge(
    server: Server, tmp_path: Path
) -> None:
    await asyncio.to_thread(
        set_group, server, "eu", "site=eu", config(("/etc/motd", "hello\n", 0o644))
    )
    seed_path = await asyncio.to_thread(write_seed, server, tmp_path / "s.json", site="eu")
    seed = await asyncio.to_thread(seed_mod.load, seed_path)
    host = SimulatedHost(tmp_path / "device")
    await asyncio.to_thread(host.write_file, "/etc/local.conf", b"not Corral's", 0o644)
    # A long poll interval: after the first pull only nudges can bring changes in time.
    agent = Agent(tmp_path / "state", host, seed, AgentSettings(poll_interval=300))
    run = asyncio.create_task(agent.run())
    try:
        status = await asyncio.wait_for(agent.wait_for_generation(1, acked=True), WAIT)
        assert status.ok and agent.device_id is not None
        assert rootfs_file(host, "/etc/motd").read_text() == "hello\n"
        await wait_for("MQTT", lambda: agent.mqtt_connected)
        shown = await asyncio.to_thread(device, server, agent.device_id)
        assert shown["in_sync"] and shown["reported"]["conditions"][0]["status"] == "Applied"
        await wait_for("online", lambda: device(server, agent.device_id or "")["online"])

        # The group changes: the nudge brings generation 2 in well under the poll interval.
        started = time.monotonic()
        await asyncio.to_thread(
            set_group, server, "eu", "", config(("/etc/app/app.conf", "level=debug\n", 0o600))
        )
        status = await asyncio.wait_for(agent.wait_for_generation(2, acked=True), WAIT)
        assert status.ok and time.monotonic() - started < 10
        app = rootfs_file(host, "/etc/app/app.conf")
        assert app.read_text() == "level=debug\n" and app.stat().st_mode & 0o777 == 0o600
        assert not rootfs_file(host, "/etc/motd").exists()
        assert rootfs_file(host, "/etc/local.conf").read_bytes() == b"not Corral's"

        # A file the agent cannot write: an Error condition for that generation, reported.
        await asyncio.to_thread(
            set_group, server, "eu", "", config(("/etc/local.conf/x", "x", 0o644))
        )
        status = await asyncio.wait_for(agent.wait_for_generation(3, acked=True), WAIT)
        assert not status.ok
        reported = (await asyncio.to_thread(device, server, agent.device_id))["reported"]
        assert reported["observed_generation"] == 3
        assert reported["conditions"][0]["status"] == "Error"
        assert reported["conditions"][0]["reason"] == "BadPath"
        assert "/etc/local.conf/x" in reported["conditions"][0]["message"]
        assert rootfs_file(host, "/etc/local.conf").read_bytes() == b"not Corral's"
    finally:
        await agent.stop()
        await run
    # A clean stop says goodbye: presence goes offline at once, not after the keepalive.
    device_id = agent.device_id or ""
    await wait_for("offline", lambda: not device(server, device_id)["online"], seconds=10)


async def test_agent_converges_over_https_alone_when_mqtt_is_off(
    server: Server, tmp_path: Path
) -> None:
    await asyncio.to_thread(set_group, server, "lab", "site=lab", config(("/etc/a", "1", 0o644)))
    seed_path = await asyncio.to_thread(write_seed, server, tmp_path / "s.json", site="lab")
    seed = await asyncio.to_thread(seed_mod.load, seed_path)
    host = SimulatedHost(tmp_path / "device")
    settings = AgentSettings(mqtt=False, poll_interval=0.5)
    agent = Agent(tmp_path / "state", host, seed, settings)
    run = asyncio.create_task(agent.run())
    try:
        assert (await asyncio.wait_for(agent.wait_for_generation(1, acked=True), WAIT)).ok
        await asyncio.to_thread(set_group, server, "lab", "", config(("/etc/b", "2", 0o640)))
        assert (await asyncio.wait_for(agent.wait_for_generation(2, acked=True), WAIT)).ok
        assert not agent.mqtt_connected and agent.pending_events == 0
        assert rootfs_file(host, "/etc/b").read_text() == "2"
        assert not rootfs_file(host, "/etc/a").exists()
        shown = await asyncio.to_thread(device, server, agent.device_id or "")
        assert shown["in_sync"] and shown["reported"]["acked_seq"] == 2
    finally:
        await agent.stop()
        await run


def test_agent_process_converges_survives_kill9_and_stops_cleanly_on_sigterm(
    server: Server, tmp_path: Path
) -> None:
    set_group(server, "shop", "site=shop", config(("/etc/shop.conf", "v1", 0o644)))
    seed = write_seed(server, tmp_path / "seed.json", site="shop")
    state, simulated, log = tmp_path / "state", tmp_path / "device", tmp_path / "agent.log"
    rootfs = simulated / "rootfs"
    proc = start_agent(state, seed, simulated, log)
    try:
        device_id = str(
            wait_until(
                "registration",
                lambda: (
                    (state / "identity.json").exists()
                    and json.loads((state / "identity.json").read_text())["device_id"]
                ),
            )
        )
        wait_until("generation 1", lambda: device(server, device_id)["in_sync"])
        assert (rootfs / "etc/shop.conf").read_text() == "v1"
        assert device(server, device_id)["reported"]["acked_seq"] == 1

        # kill -9, then start again: it resumes from its state without reusing a seq (the
        # server would ignore a reused one, and generation 2 would never be reported).
        proc.kill()
        proc.wait()
        proc = start_agent(state, seed, simulated, log)
        set_group(server, "shop", "", config(("/etc/shop.conf", "v2", 0o600)))
        wait_until(
            "generation 2",
            lambda: device(server, device_id)["reported"]["observed_generation"] == 2,
        )
        reported = device(server, device_id)["reported"]
        assert reported["acked_seq"] == 2 and reported["conditions"][0]["status"] == "Applied"
        assert (rootfs / "etc/shop.conf").read_text() == "v2"
        wait_until("online", lambda: device(server, device_id)["online"])

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, log.read_text()
        wait_until("offline", lambda: not device(server, device_id)["online"], timeout=10)
        assert "Traceback" not in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
