"""A real agent process whose pass blocks: ``python -m tests.node_image.blocking_agent
STATE SEED DEVICE``. It runs the agent as ``corral-agent run`` does (``cli.run_agent``: its
SIGTERM handler), with a reconciler that writes ``blocked`` in STATE when its pass starts and
``cancelled`` when the pass is cancelled."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

from node_image.agent import cli
from node_image.agent import seed as seed_mod
from node_image.agent.context import ReconcileContext
from node_image.agent.daemon import Agent, AgentSettings
from node_image.agent.state import StateDir
from node_image.host import SimulatedHost
from registration.desired import Condition, Spec


class Blocker:
    name = "blocker"

    def __init__(self, state: StateDir) -> None:
        self.root = state.root

    async def reconcile(self, spec: Spec, ctx: ReconcileContext) -> Condition:
        await asyncio.to_thread((self.root / "blocked").write_text, "")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            (self.root / "cancelled").write_text("")  # noqa: ASYNC230 - must not be cut short
            raise
        raise AssertionError("unreachable")


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    state, seed, device = (Path(a) for a in sys.argv[1:4])
    settings = AgentSettings(poll_interval=300, reconcilers=(Blocker,))
    agent = Agent(state, SimulatedHost(device), seed_mod.load(seed), settings)
    asyncio.run(cli.run_agent(agent))


if __name__ == "__main__":
    main()
