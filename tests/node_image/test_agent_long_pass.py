"""A long reconcile does not hold the agent up (issue 7, "the agent's seams").

- An install stand-in that runs a real command for a long time (``sleep``, in a thread through
  ``ctx.run`` as the K3s reconciler runs ``install.sh``): a nudge still brings the newer
  spec, which supersedes the pass and converges while the command is still running.
- The daemon's waits never lose a cancel: on Python 3.11 ``asyncio.wait_for`` returned the
  event's result when it had just been set as the waiting task was cancelled, so a worker
  or flusher being stopped waited on, and ``Agent.stop`` with it (the stall seen once in a
  combined run).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

from node_image.agent import seed as seed_mod
from node_image.agent.context import ReconcileContext
from node_image.agent.daemon import Agent, AgentSettings
from node_image.agent.reconcilers import ConfigReconciler
from node_image.agent.state import StateDir
from node_image.agent.worker import wait_event
from node_image.host import SimulatedHost
from registration.desired import Condition, Spec
from tests.support import Server, device, set_group
from tests.waiting import wait_for

WAIT = 30.0


def config(content: str) -> dict[str, Any]:
    return {"config": [{"path": "/etc/app.conf", "content": content, "mode": 0o644}]}


class SlowInstall:
    """Runs an "installer" (a real ``sleep`` through ``ctx.run``, in a thread) while the
    spec's ``/etc/app.conf`` says ``slow``; it writes its pid to ``pidfile`` first."""

    name = "install"

    def __init__(self, pidfile: Path) -> None:
        self.pidfile = pidfile
        self.passes: list[str] = []

    def __call__(self, state: StateDir) -> SlowInstall:  # the registry's factory
        return self

    async def reconcile(self, spec: Spec, ctx: ReconcileContext) -> Condition:
        content = spec.config[0].content if spec.config else ""
        self.passes.append(content)
        if content == "slow":
            await ctx.progress(None, "Installing", "the installer is running")
            script = f'echo $$ > "{self.pidfile}.tmp" && mv "{self.pidfile}.tmp" "{self.pidfile}"'
            await ctx.run(["sh", "-c", f"{script} && exec sleep 300"], time_limit=600)
        return Condition(type=self.name, status="Ready", message=content)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


async def test_a_nudge_during_a_long_install_supersedes_it_while_the_installer_runs(
    server: Server, tmp_path: Path
) -> None:
    await asyncio.to_thread(set_group, server, "slow", "site=slow", config("slow"))
    install = SlowInstall(tmp_path / "installer.pid")
    token = (await asyncio.to_thread(server.create_token, labels={"site": "slow"}))["token"]
    (tmp_path / "seed.json").write_text(json.dumps({"server": server.url, "token": token}))
    seed = await asyncio.to_thread(seed_mod.load, tmp_path / "seed.json")
    settings = AgentSettings(reconcilers=(ConfigReconciler, install), poll_interval=300)
    agent = Agent(tmp_path / "state", SimulatedHost(tmp_path / "device"), seed, settings)
    run = asyncio.create_task(agent.run())
    pid = 0
    try:
        await wait_for("the installer started", install.pidfile.exists, WAIT)
        pid = int(install.pidfile.read_text())
        await wait_for("MQTT", lambda: agent.mqtt_connected, WAIT)
        # Polls are 300 s apart: only the nudge can bring generation 2.
        await asyncio.to_thread(set_group, server, "slow", "", config("fast"))
        status = await asyncio.wait_for(agent.wait_for_generation(2, acked=True), WAIT)
        # Converged, reported and acknowledged while the first pass's installer still runs.
        assert alive(pid)
        assert status.ok and status.observed_generation == 2
        assert install.passes[:2] == ["slow", "fast"]
        by_type = {c.type: c for c in status.conditions}
        assert by_type["install"].message == "fast" and by_type["config"].status == "Applied"
        assert (agent.host.rootfs / "etc/app.conf").read_text() == "fast"
        shown = await asyncio.to_thread(device, server, agent.device_id or "")
        assert shown["in_sync"] and shown["reported"]["observed_generation"] == 2
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)  # the leftover installer: its thread then returns
        await asyncio.wait_for(agent.stop(), 10)
        await asyncio.wait_for(run, 10)
    assert run.exception() is None


async def test_a_wait_whose_event_was_just_set_still_ends_when_cancelled() -> None:
    # Every interleaving of "the event is set" and "the task is cancelled" that leaves the
    # waiting task not yet finished: the cancel must win.
    checked = 0
    for delay in range(8):
        event = asyncio.Event()
        waiting = asyncio.create_task(wait_event(event, 300))
        for _ in range(3):
            await asyncio.sleep(0)
        event.set()
        for _ in range(delay):
            await asyncio.sleep(0)
        if waiting.done():
            assert waiting.result() is True
            continue
        waiting.cancel()
        await asyncio.wait({waiting})
        assert waiting.cancelled(), f"the cancel was lost after {delay} loop turns"
        checked += 1
    assert checked >= 1


async def test_a_wait_times_out_and_sees_an_event_set_before_it() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.05) is False
    event.set()
    assert await wait_event(event, 0) is True
