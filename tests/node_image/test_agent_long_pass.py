"""A long reconcile does not hold the agent up (issue 7, "the agent's seams").

- An install stand-in that runs a real command for a long time (``sleep``, through
  ``ctx.run`` as the K3s reconciler runs ``install.sh``): a nudge still brings the newer
  spec, which supersedes the pass; twice, and the third generation converges while both
  superseded commands still run. Each command has a thread of its own: in the shared pool
  of two threads (as ``corral-agent run`` has) the two would hold up every pull and report.
- The daemon's waits never lose a cancel: on Python 3.11 ``asyncio.wait_for`` returned the
  event's result when it had just been set as the waiting task was cancelled, so a worker
  or flusher being stopped waited on, and ``Agent.stop`` with it (the stall seen once in a
  combined run).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from node_image.agent import seed as seed_mod
from node_image.agent.context import ReconcileContext
from node_image.agent.daemon import Agent, AgentSettings
from node_image.agent.reconcilers import ConfigReconciler
from node_image.agent.state import StateDir
from node_image.agent.worker import wait_event
from node_image.host import SimulatedHost
from registration.desired import Condition, Spec
from tests.support import Server, device, set_group

WAIT = 30.0
T = TypeVar("T")


def config(content: str) -> dict[str, Any]:
    return {"config": [{"path": "/etc/app.conf", "content": content, "mode": 0o644}]}


class SlowInstall:
    """Runs an "installer" (a real ``sleep`` through ``ctx.run``, in a thread) while the
    spec's ``/etc/app.conf`` starts with ``slow``; it writes its pid to ``pidfile(content)``."""

    name = "install"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.passes: list[str] = []

    def __call__(self, state: StateDir) -> SlowInstall:  # the registry's factory
        return self

    def pidfile(self, content: str) -> Path:
        return self.directory / f"{content}.pid"

    async def reconcile(self, spec: Spec, ctx: ReconcileContext) -> Condition:
        content = spec.config[0].content if spec.config else ""
        self.passes.append(content)
        if content.startswith("slow"):
            await ctx.progress(None, "Installing", "the installer is running")
            pidfile = self.pidfile(content)
            script = f'echo $$ > "{pidfile}.tmp" && mv "{pidfile}.tmp" "{pidfile}"'
            await ctx.run(["sh", "-c", f"{script} && exec sleep 300"], time_limit=600)
        return Condition(type=self.name, status="Ready", message=content)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


async def test_nudges_during_long_installs_supersede_them_while_the_installers_run(
    server: Server, tmp_path: Path
) -> None:
    # As in ``corral-agent run`` (cli.run_agent): the loop's shared pool has two threads,
    # and the agent alone uses it (the test's blocking calls have a pool of their own).
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=2))
    side = ThreadPoolExecutor(max_workers=2)

    async def off(call: Callable[..., T], *args: Any) -> T:
        return await loop.run_in_executor(side, functools.partial(call, *args))

    async def poll(what: str, check: Callable[[], object]) -> None:
        try:
            async with asyncio.timeout(WAIT):
                while not await off(check):  # noqa: ASYNC110 - another process writes it
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise AssertionError(f"timed out after {WAIT:g}s waiting for {what}") from None

    await off(set_group, server, "slow", "site=slow", config("slow1"))
    install = SlowInstall(tmp_path)
    token = (await off(lambda: server.create_token(labels={"site": "slow"})))["token"]
    seed_file = tmp_path / "seed.json"
    await off(seed_file.write_text, json.dumps({"server": server.url, "token": token}))
    seed = await off(seed_mod.load, seed_file)
    host = SimulatedHost(tmp_path / "device")
    settings = AgentSettings(reconcilers=(ConfigReconciler, install), poll_interval=300)
    agent = Agent(tmp_path / "state", host, seed, settings)
    run = asyncio.create_task(agent.run())
    pids: list[int] = []
    try:
        for content, following in (("slow1", "slow2"), ("slow2", "fast")):
            pidfile = install.pidfile(content)
            await poll(f"the installer of {content} started", pidfile.exists)
            pids.append(int(await off(pidfile.read_text)))
            await poll("MQTT", lambda: agent.mqtt_connected)
            # Polls are 300 s apart: only a nudge brings the next generation.
            await off(set_group, server, "slow", "", config(following))
        status = await asyncio.wait_for(agent.wait_for_generation(3, acked=True), WAIT)
        # Converged, reported and acknowledged while both superseded installers still run.
        assert all([await off(alive, pid) for pid in pids])
        assert status.ok and status.observed_generation == 3
        assert install.passes[:3] == ["slow1", "slow2", "fast"]
        by_type = {c.type: c for c in status.conditions}
        assert by_type["install"].message == "fast" and by_type["config"].status == "Applied"
        assert await off((host.rootfs / "etc/app.conf").read_text) == "fast"
        shown = await off(device, server, agent.device_id or "")
        assert shown["in_sync"] and shown["reported"]["observed_generation"] == 3
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)  # the leftover installers: their threads then end
        try:
            await asyncio.wait_for(agent.stop(), 10)
            await asyncio.wait_for(run, 10)
        finally:
            side.shutdown(wait=False, cancel_futures=True)
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
