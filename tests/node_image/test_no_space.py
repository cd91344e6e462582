"""A spec the agent cannot apply for lack of space: Error condition with the reason, the agent
keeps running, retries with backoff, and converges once there is room (a real tmpfs)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from node_image.agent import seed as seed_mod
from node_image.agent.daemon import Agent, AgentSettings
from node_image.host import SimulatedHost
from tests.support import Server, device


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mountpoint = tmp_path / "host" / "rootfs" / "var" / "small"
    mountpoint.mkdir(parents=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "corral-test", str(mountpoint)], check=True
    )
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


async def test_no_space_is_an_error_condition_then_retried_until_applied(
    server: Server, tmp_path: Path, tiny_disk: Path
) -> None:
    blob = {"path": "/var/small/blob.bin", "mode": 0o600, "content": "x" * 200_000}
    body = {"name": "big", "selector": "", "spec": {"config": [blob]}}
    assert (await asyncio.to_thread(server.api, "POST", "/api/v1/groups", body)).ok
    token = (await asyncio.to_thread(server.create_token))["token"]
    seed_file = tmp_path / "seed.json"
    await asyncio.to_thread(
        seed_file.write_text, json.dumps({"server": server.url, "token": token})
    )
    seed = await asyncio.to_thread(seed_mod.load, seed_file)
    settings = AgentSettings(retry_backoff_base=0.5, retry_backoff_cap=1.0)
    agent = Agent(tmp_path / "state", SimulatedHost(tmp_path / "host"), seed, settings)
    task = asyncio.create_task(agent.run())
    try:
        async with asyncio.timeout(60):
            status = await agent.wait_for_generation(1, acked=True)
        assert [(c.type, c.status, c.reason) for c in status.conditions if c.type == "config"] == [
            ("config", "Error", "NoSpace")
        ]
        assert "/var/small/blob.bin" in status.conditions[0].message
        shown = await asyncio.to_thread(device, server, agent.device_id or "")
        assert shown["reported"]["conditions"][0]["reason"] == "NoSpace"
        assert not task.done(), "the agent keeps running"
        # Room appears (the small disk goes away); the retry applies the spec.
        await asyncio.to_thread(subprocess.run, ["umount", str(tiny_disk)], check=True)

        def applied() -> bool:
            conditions = device(server, agent.device_id or "")["reported"]["conditions"]
            return bool(conditions) and {c["status"] for c in conditions} == {"Applied"}

        async with asyncio.timeout(60):
            while not await asyncio.to_thread(applied):  # noqa: ASYNC110 - another process
                await asyncio.sleep(0.2)
        assert (tiny_disk / "blob.bin").stat().st_size == 200_000
    finally:
        await agent.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
