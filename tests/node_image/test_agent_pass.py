"""A reconcile pass runs as its own task: pulls go on while it runs, a newer generation
supersedes it, and stopping the agent cancels it (issue 7, "the agent's seams").

In-process agents on a ``SimulatedHost`` against a real server, with an injected reconciler
that blocks on the generation the test chooses.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from node_image.agent import seed as seed_mod
from node_image.agent.context import ReconcileContext
from node_image.agent.daemon import Agent, AgentSettings
from node_image.agent.reconcilers import ConfigReconciler
from node_image.agent.state import StateDir
from node_image.host import SimulatedHost
from registration.desired import Condition, Spec
from tests.support import Server, device, set_group
from tests.waiting import wait_for

WAIT = 30.0
ROOT = Path(__file__).resolve().parents[2]


def config(content: str) -> dict[str, Any]:
    return {"config": [{"path": "/etc/app.conf", "content": content, "mode": 0o644}]}


class Gate:
    """A reconciler that blocks while the spec's ``/etc/app.conf`` says ``slow``."""

    name = "gate"

    def __init__(self) -> None:
        self.blocked = asyncio.Event()
        self.cancelled = 0
        self.passes: list[str] = []

    def __call__(self, state: StateDir) -> Gate:  # the registry's factory
        return self

    async def reconcile(self, spec: Spec, ctx: ReconcileContext) -> Condition:
        content = spec.config[0].content if spec.config else ""
        self.passes.append(content)
        if content == "slow":
            self.blocked.set()
            try:
                await asyncio.Event().wait()  # an install that never becomes Ready
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        return Condition(type=self.name, status="Ready", message=content)


async def start(
    server: Server, tmp_path: Path, gate: Gate, **settings: Any
) -> tuple[Agent, asyncio.Task[None]]:
    def seed_file() -> Path:
        token = server.create_token(labels={"site": "gate"}, max_uses=1)["token"]
        path = tmp_path / "seed.json"
        path.write_text(json.dumps({"server": server.url, "token": token}))
        return path

    seed = await asyncio.to_thread(seed_mod.load, await asyncio.to_thread(seed_file))
    host = SimulatedHost(tmp_path / "device")
    agent = Agent(
        tmp_path / "state",
        host,
        seed,
        AgentSettings(reconcilers=(ConfigReconciler, gate), **settings),
    )
    return agent, asyncio.create_task(agent.run())


def saved_generation(agent: Agent) -> int:
    return int(json.loads(agent.state.spec.read_text())["document"]["generation"])


@pytest.mark.parametrize("wakes", ["nudge", "poll"], ids=["nudge-during-pass", "poll-during-pass"])
async def test_a_newer_generation_pulled_during_a_blocked_pass_supersedes_it(
    server: Server, tmp_path: Path, wakes: str
) -> None:
    await asyncio.to_thread(set_group, server, "gate", "site=gate", config("slow"))
    gate = Gate()
    if wakes == "nudge":  # only a nudge can bring generation 2 in time
        agent, run = await start(server, tmp_path, gate, poll_interval=300)
    else:  # no MQTT: only the poll timer pulls
        agent, run = await start(server, tmp_path, gate, mqtt=False, poll_interval=0.5)
    try:
        await asyncio.wait_for(gate.blocked.wait(), WAIT)
        if wakes == "nudge":
            await wait_for("MQTT", lambda: agent.mqtt_connected)
        assert agent.status.seq == 0 or agent.status.observed_generation < 1

        started = time.monotonic()
        await asyncio.to_thread(set_group, server, "gate", "", config("fast"))
        # The worker pulls while the pass is blocked: the new spec is saved...
        await wait_for("generation 2 saved", lambda: saved_generation(agent) == 2)
        # ...the blocked pass is cancelled, and a pass of generation 2 converges.
        status = await asyncio.wait_for(agent.wait_for_generation(2, acked=True), WAIT)
        assert time.monotonic() - started < 10
        assert status.ok and status.observed_generation == 2
        assert gate.cancelled == 1 and gate.passes[:2] == ["slow", "fast"]
        assert set(gate.passes[2:]) <= {"fast"}  # polls since: drift passes
        by_type = {c.type: c for c in status.conditions}
        assert by_type["gate"].message == "fast" and by_type["config"].status == "Applied"
        assert (agent.host.rootfs / "etc/app.conf").read_text() == "fast"
        shown = await asyncio.to_thread(device, server, agent.device_id or "")
        assert shown["in_sync"] and shown["reported"]["observed_generation"] == 2
    finally:
        await agent.stop()
        await run


async def test_stopping_the_agent_cancels_a_running_pass_promptly(
    server: Server, tmp_path: Path
) -> None:
    await asyncio.to_thread(set_group, server, "gate", "site=gate", config("slow"))
    gate = Gate()
    agent, run = await start(server, tmp_path, gate, poll_interval=300)
    try:
        await asyncio.wait_for(gate.blocked.wait(), WAIT)
    finally:
        started = time.monotonic()
        await asyncio.wait_for(agent.stop(), 5)
        await asyncio.wait_for(run, 5)
    assert time.monotonic() - started < 5
    assert gate.cancelled == 1 and run.done() and run.exception() is None


async def test_sigterm_during_a_pass_stops_a_real_agent_process_promptly(
    server: Server, tmp_path: Path
) -> None:
    await asyncio.to_thread(set_group, server, "gate", "site=gate", config("slow"))
    token = (await asyncio.to_thread(server.create_token, labels={"site": "gate"}))["token"]
    seed = tmp_path / "seed.json"
    seed.write_text(json.dumps({"server": server.url, "token": token}))
    state = tmp_path / "state"
    log = tmp_path / "agent.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.node_image.blocking_agent",
            str(state),
            str(seed),
            str(tmp_path / "device"),
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        await wait_for("the pass blocked", lambda: (state / "blocked").exists())
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0, log.read_text()
        assert time.monotonic() - started < 5
        assert (state / "cancelled").exists()
        assert "Traceback" not in log.read_text()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
