"""Crashes and restarts: an agent killed mid-reconcile resumes; agents ride out restarts of
the server and the broker. Both brokers."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from node_image.agent import seed as seed_mod
from node_image.agent.daemon import Agent, AgentSettings
from node_image.host import SimulatedHost
from tests.support import Server, device, set_group, start_agent
from tests.waiting import wait_until

FILES = 1500
CONVERGE = 120.0  # seconds an agent gets to converge after a restart


def many_files(version: str, count: int) -> list[dict[str, Any]]:
    return [
        {"path": f"/etc/app/part-{i:04d}.conf", "mode": 0o640, "content": f"{version}:{i}\n" * 8}
        for i in range(count)
    ]


@pytest.mark.slow
def test_agent_killed_mid_reconcile_resumes_and_converges(
    fleet_server: Server, tmp_path: Path
) -> None:
    server = fleet_server
    set_group(server, "big", "role=big", {"config": []})
    token = server.create_token(labels={"role": "big"})["token"]
    seed = tmp_path / "seed.json"
    seed.write_text(json.dumps({"server": server.url, "token": token}))
    state, host = tmp_path / "state", tmp_path / "host"
    app_dir = host / "rootfs" / "etc" / "app"
    log = tmp_path / "agent.log"

    def start() -> subprocess.Popen[bytes]:
        return start_agent(state, seed, host, log)

    agent = start()
    try:
        wait_until("registration", lambda: (state / "identity.json").exists(), CONVERGE)
        device_id = json.loads((state / "identity.json").read_text())["device_id"]
        wait_until("first convergence", lambda: device(server, device_id)["in_sync"], CONVERGE)
        caught_midway = 0
        for round_ in range(3):
            version = f"v{round_}"
            count = FILES - 400 * round_  # later rounds also remove files
            set_group(server, "big", "role=big", {"config": many_files(version, count)})

            def written(version: str = version) -> int:
                try:
                    return sum(1 for p in app_dir.iterdir() if p.read_text().startswith(version))
                except OSError:
                    return 0

            wait_until("the reconcile to start", lambda: written() > 0, timeout=60)
            time.sleep(random.uniform(0, 0.05))
            agent.kill()
            agent.wait()
            if written() < count:
                caught_midway += 1
            agent = start()
            generation = device(server, device_id)["desired"]["generation"]

            def converged(g: int = generation) -> bool:
                return bool(device(server, device_id)["reported"]["observed_generation"] == g)

            wait_until(f"convergence to {version}", converged, CONVERGE)
            names = sorted(p.name for p in app_dir.iterdir() if not p.name.startswith("."))
            assert names == [f"part-{i:04d}.conf" for i in range(count)]
            assert all((app_dir / n).read_text().startswith(version) for n in names)
            assert all((app_dir / n).stat().st_mode & 0o777 == 0o640 for n in names[:50])
        assert caught_midway >= 1, "no kill landed in the middle of a reconcile"
        outbox = json.loads((state / "outbox.json").read_text())
        wait_until(
            "every event applied",
            lambda: (
                device(server, device_id)["reported"]["status_events"]["max_seq"]
                == outbox["next_seq"] - 1
            ),
            CONVERGE,
        )
        counts = device(server, device_id)["reported"]["status_events"]
        assert counts["events"] == counts["distinct"] == counts["max_seq"]
    finally:
        agent.kill()
        agent.wait()


@pytest.mark.slow
async def test_agents_ride_out_server_and_broker_restarts(
    fleet_server: Server, tmp_path: Path
) -> None:
    server = fleet_server
    x_conf = {"path": "/etc/x.conf", "mode": 0o644}
    await asyncio.to_thread(
        set_group, server, "g", "site=x", {"config": [{**x_conf, "content": "1"}]}
    )
    token = (await asyncio.to_thread(server.create_token, labels={"site": "x"}, max_uses=5))[
        "token"
    ]
    seed_file = tmp_path / "seed.json"
    await asyncio.to_thread(
        seed_file.write_text, json.dumps({"server": server.url, "token": token})
    )
    seed = await asyncio.to_thread(seed_mod.load, seed_file)
    settings = AgentSettings(
        poll_interval=3.0,
        poll_interval_connected=600.0,
        ack_timeout=3.0,
        mqtt_backoff_cap=2.0,
        http_backoff_cap=3.0,
    )
    agents = [
        Agent(tmp_path / f"a{i}", SimulatedHost(tmp_path / f"h{i}"), seed, settings)
        for i in range(5)
    ]
    tasks = [asyncio.create_task(a.run()) for a in agents]
    try:
        async with asyncio.timeout(90):
            await asyncio.gather(*(a.wait_for_generation(1, acked=True) for a in agents))

        async def change_and_converge(content: str) -> None:
            await asyncio.to_thread(
                set_group,
                server,
                "g",
                "site=x",
                {"config": [{**x_conf, "content": content}]},
            )
            target = (await asyncio.to_thread(device, server, agents[0].device_id or ""))[
                "desired"
            ]["generation"]
            async with asyncio.timeout(90):
                await asyncio.gather(*(a.wait_for_generation(target, acked=True) for a in agents))
            for i in range(5):
                path = tmp_path / f"h{i}" / "rootfs" / "etc" / "x.conf"
                assert await asyncio.to_thread(path.read_text) == content

        # The server restarts (with the embedded broker inside it, that is the broker too).
        await asyncio.to_thread(server.stop)
        await asyncio.to_thread(server.start)
        await change_and_converge("2")
        # The broker restarts on its own (Mosquitto), or with the server (embedded).
        await asyncio.to_thread(server.restart_broker)
        await change_and_converge("3")
        await asyncio.to_thread(
            wait_until, "MQTT reconnected", lambda: all(a.mqtt_connected for a in agents), 30
        )
        online = await asyncio.to_thread(
            lambda: [device(server, a.device_id or "")["online"] for a in agents]
        )
        assert all(online)
    finally:
        await asyncio.gather(*(a.stop() for a in agents), return_exceptions=True)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
