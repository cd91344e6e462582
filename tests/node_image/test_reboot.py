"""A reconciler that reboots, through the real daemon against a real server: the agent stops
with RebootRequested, the simulated machine comes back in the new slot, and the restarted
agent finishes the work and reports it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from node_image import boot
from node_image.agent import seed as seed_mod
from node_image.agent.context import ReconcileContext
from node_image.agent.daemon import Agent, AgentSettings
from node_image.agent.markers import Frequency
from node_image.agent.reconcilers import ConfigReconciler
from node_image.agent.state import StateDir
from node_image.boot import RebootRequested
from node_image.host import SimulatedHost
from registration.desired import Condition, Spec
from tests.support import Server

WAIT = 30.0
IMAGE = b"corral os 2.0 squashfs" * 1000


class SlotSwitcher:
    """A stand-in for the OS reconciler's shape: write B, try it, reboot; then mark it good."""

    name = "os"

    def __init__(self, state: StateDir) -> None:
        self.state = state

    async def reconcile(self, spec: Spec, ctx: ReconcileContext) -> Condition:
        host = ctx.host
        active = await asyncio.to_thread(host.active_slot)
        if active == "A":
            written = await asyncio.to_thread(host.write_slot, "B", [IMAGE[:5000], IMAGE[5000:]])
            check = await asyncio.to_thread(host.read_slot_sha256, "B", written.size)
            assert check == written.sha256
            await asyncio.to_thread(boot.try_next, host, "B", 3)
            await ctx.progress(None, "Rebooting", "into slot B")
            await ctx.reboot()

        async def mark_good() -> None:
            await asyncio.to_thread(boot.mark_good, host, active)

        await ctx.markers.run("os-mark-good", Frequency.PER_BOOT, mark_good)
        return Condition(type="os", status="Ready", reason="Healthy", message=f"slot {active}")


def write_seed(server: Server, path: Path) -> Path:
    token = server.create_token(labels={}, max_uses=2)["token"]
    path.write_text(json.dumps({"server": server.url, "token": token, "labels": {}}))
    return path


async def test_a_reboot_stops_the_agent_and_the_restarted_agent_reports_the_new_slot(
    server: Server, tmp_path: Path
) -> None:
    seed_path = await asyncio.to_thread(write_seed, server, tmp_path / "seed.json")
    seed = await asyncio.to_thread(seed_mod.load, seed_path)
    settings = AgentSettings(poll_interval=300, reconcilers=(ConfigReconciler, SlotSwitcher))
    host = SimulatedHost(tmp_path / "device")

    first = Agent(tmp_path / "state", host, seed, settings)
    with pytest.raises(RebootRequested) as caught:
        await asyncio.wait_for(first.run(), WAIT)
    assert caught.value.slot == "B"
    assert await asyncio.to_thread(host.active_slot) == "B"
    assert await asyncio.to_thread(host.boots) == 2
    env = await asyncio.to_thread(host.read_grubenv)
    assert env == {"corral_next": "B", "corral_tries": "2"}  # GRUB took one try

    # The machine is back: a new agent on the same directories (what the CLI's re-exec does).
    again = Agent(tmp_path / "state", SimulatedHost(tmp_path / "device"), None, settings)
    run = asyncio.create_task(again.run())
    try:
        # The restarted agent first holds (and may get acknowledged) the status it had before
        # the reboot, "Progressing: Rebooting"; wait for its own pass's report.
        async def slot_reported() -> Condition:
            while True:
                status = await again.wait_for_generation(0, acked=True)
                found = next(c for c in status.conditions if c.type == "os")
                if found.reason != "Rebooting":
                    return found
                await asyncio.sleep(0.1)

        os_condition = await asyncio.wait_for(slot_reported(), WAIT)
        assert (os_condition.status, os_condition.message) == ("Ready", "slot B")
        assert await asyncio.to_thread(host.read_grubenv) == {"corral_slot": "B"}
        shown = await asyncio.to_thread(server.api, "GET", f"/api/v1/devices/{again.device_id}")
        reported = shown.json()["reported"]["conditions"]
        assert {"type": "os", "status": "Ready", "reason": "Healthy", "message": "slot B"} in [
            {k: c[k] for k in ("type", "status", "reason", "message")} for c in reported
        ]
    finally:
        await again.stop()
        await run
