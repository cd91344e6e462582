"""``corral demo --devices N``: a server plus N simulated agents in one process.

The agents are the real agent code (``node_image.agent.daemon.Agent``) on
``SimulatedHost``s kept under ``<data-dir>/demo/``. They register with a demo token, join
the ``demo`` group, converge to its spec and report, so a newcomer sees a live fleet in
``corral device list`` (same ``--data-dir`` and ``--listen`` as ``corral serve``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web

from edge_server import bootstrap
from edge_server.app import create_app
from edge_server.cli.serve import (
    MAX_REQUEST_LINE,
    add_mqtt_arguments,
    announce,
    http_log,
    settings_from_args,
)
from edge_server.errors import Conflict
from edge_server.keys import CA, NOTIFIER, STORE, TOKEN_SEALER
from edge_server.ops import Actor
from edge_server.ops import groups as group_ops
from edge_server.ops import tokens as token_ops
from edge_server.ops.groups import GroupCreate
from edge_server.server_certs import SERVER_CERTS
from edge_server.settings import Settings
from registration.protocol import TokenCreate

log = logging.getLogger(__name__)

DEMO_GROUP = GroupCreate.model_validate(
    {
        "name": "demo",
        "selector": "corral.demo=true",
        "priority": 0,
        "spec": {
            "os": {"version": "demo-1"},
            "config": [
                {"path": "/etc/corral-demo/motd", "mode": 0o644, "content": "Welcome to Corral\n"}
            ],
        },
    }
)


def demo_token(count: int) -> TokenCreate:
    return TokenCreate(
        group="demo",
        labels={"corral.demo": "true"},
        max_uses=count,
        ttl_seconds=3600,
        name_template="demo-${dmi.product_uuid:8}",
    )


def add_parser(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("demo", help="run a server and N simulated devices")
    p.add_argument("--devices", type=int, default=50)
    p.add_argument("--listen", help="HOST:PORT (default 0.0.0.0:8443)")
    p.add_argument("--san", action="append", default=[])
    p.add_argument("--public-url")
    add_mqtt_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.devices < 1:
        sys.stderr.write("corral: error: --devices must be at least 1\n")
        return 2
    settings = settings_from_args(args)
    creds = bootstrap.prepare(settings)
    announce(settings, creds)
    asyncio.run(demo(settings, args.devices))
    return 0


DEMO_ACTOR = Actor("demo")
#: How long the simulated devices get on SIGTERM to say goodbye (presence offline, MQTT
#: disconnect) before their tasks are cancelled. One stuck device kept a demo running for
#: more than half an hour after SIGTERM on a loaded machine.
STOP_TIMEOUT = 60.0
#: Worker threads per simulated device. Each agent does its blocking work (HTTPS calls with
#: 30 s timeouts, registration, state files) through the loop's default executor, which has
#: min(32, cores + 4) threads: 6 here, for 50 devices. Calls then queued behind each other
#: for as long as their timeouts, and statuses went unacknowledged; a real device has its
#: own machine. The agent's own process uses 2 (``node_image.agent.cli.run_agent``).
THREADS_PER_DEVICE = 2
MAX_THREADS = 256


async def _prepare_fleet(app: web.Application, count: int) -> str:
    """The demo group (kept if it exists) and a token for the simulated devices."""
    store, notifier = app[STORE], app[NOTIFIER]
    with contextlib.suppress(Conflict):
        await notifier.run(group_ops.create(store, DEMO_ACTOR, DEMO_GROUP))
    token = await notifier.run(
        token_ops.create(
            store, DEMO_ACTOR, demo_token(count), app[CA].fingerprint, app[TOKEN_SEALER]
        )
    )
    return token.token


async def demo(settings: Settings, count: int) -> None:
    from node_image.agent.daemon import Agent, AgentSettings
    from node_image.agent.seed import Seed
    from node_image.host import SimulatedHost
    from registration import tokens

    loop = asyncio.get_running_loop()
    loop.set_default_executor(
        ThreadPoolExecutor(
            max_workers=min(MAX_THREADS, 8 + THREADS_PER_DEVICE * count), thread_name_prefix="demo"
        )
    )
    app = create_app(settings)
    runner = web.AppRunner(
        app, access_log=None, shutdown_timeout=10, logger=http_log, max_line_size=MAX_REQUEST_LINE
    )
    await runner.setup()
    ssl_context = app[SERVER_CERTS].https
    site = web.TCPSite(runner, settings.host or None, settings.port, ssl_context=ssl_context)
    await site.start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    agents: list[Agent] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        token = tokens.parse(await _prepare_fleet(app, count))
        seed = Seed(server=settings.local_url, token=token)
        root = settings.data_dir / "demo"
        for i in range(count):
            directory = root / f"device-{i:04d}"
            host = SimulatedHost(directory)
            agent = Agent(directory / "agent", host, seed, AgentSettings(poll_interval=30.0))
            agents.append(agent)
            tasks.append(asyncio.create_task(agent.run(), name=f"demo-agent-{i}"))
        sys.stdout.write(f"demo: {count} simulated devices starting under {root}\n")
        sys.stdout.flush()
        await stop.wait()
    finally:
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                await asyncio.gather(*(a.stop() for a in agents), return_exceptions=True)
        except TimeoutError:
            stuck = sum(1 for task in tasks if not task.done())
            log.warning("demo: %d devices did not stop in %.0f s; cancelled", stuck, STOP_TIMEOUT)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await runner.cleanup()
