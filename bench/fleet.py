"""The fleet of the fleet benches: N real agents (``node_image.agent.daemon.Agent`` on
``SimulatedHost``), registered with the agent's own registration code, run in worker
processes of their own (separate from the server's and from the bench's) and driven from the
bench over pipes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing as mp
import os
import shutil
import signal
import tempfile
import time
import traceback
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.procstat import raise_nofile
from bench.report import log
from bench.stack import LABELS, Stack


@dataclass(frozen=True)
class DeviceFiles:
    device_id: str
    ca: Path
    cert: Path
    key: Path


class Agents:
    """Real agents on simulated hosts, in this process's event loop: devices ``indices`` of
    the fleet, each kept under ``root/dNNNNN``."""

    def __init__(self, root: Path, url: str, token: str, indices: Sequence[int]) -> None:
        from node_image.agent.seed import Seed
        from registration import tokens

        self.root = root
        self.indices = list(indices)
        self.seed = Seed(server=url, token=tokens.parse(token), labels=dict(LABELS))
        self.agents: list[Any] = []
        self.tasks: list[asyncio.Task[None]] = []

    def _dirs(self, i: int) -> tuple[Path, Path]:
        device = self.root / f"d{i:05d}"
        return device / "host", device / "agent"

    async def register(self, concurrency: int = 32, attempts: int = 5) -> list[DeviceFiles]:
        """Register every device with the agent's registration code (what ``Agent.run`` does
        first), ``concurrency`` at a time in threads."""
        from node_image.agent import register as register_mod
        from node_image.agent.state import StateDir
        from node_image.host import SimulatedHost

        def one(i: int) -> DeviceFiles:
            host_dir, state_dir = self._dirs(i)
            host = SimulatedHost(host_dir)
            state = StateDir(state_dir, fsync=False)
            for attempt in range(attempts):
                try:
                    result = register_mod.register(self.seed, state, collect=host.collect_facts)
                    return DeviceFiles(result.device_id, state.ca, state.cert, state.key)
                except Exception as e:  # noqa: BLE001 - retried, then raised
                    if attempt == attempts - 1:
                        raise
                    log(f"registration {i} failed ({e}); again")
                    time.sleep(1 + attempt)
            raise AssertionError("unreachable")

        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(concurrency, thread_name_prefix="register") as pool:
            futures = [loop.run_in_executor(pool, one, i) for i in self.indices]
            return list(await asyncio.gather(*futures))

    async def start(
        self, generation: int, batch: int = 500, within: float = 600, **settings: Any
    ) -> float:
        """Start the agents ``batch`` at a time, each batch until it reports ``generation``
        acknowledged and is connected over MQTT. Returns seconds."""
        from node_image.agent.daemon import Agent, AgentSettings
        from node_image.host import SimulatedHost

        started = time.monotonic()
        for first in range(0, len(self.indices), batch):
            group = []
            for i in self.indices[first : first + batch]:
                host_dir, state_dir = self._dirs(i)
                agent = Agent(state_dir, SimulatedHost(host_dir), None, AgentSettings(**settings))
                self.agents.append(agent)
                self.tasks.append(asyncio.create_task(agent.run(), name=f"fleet-agent-{i}"))
                group.append(agent)
            await self.wait_generation(generation, group, within)
            await self.wait_mqtt(group, within)
        return time.monotonic() - started

    def check_tasks(self) -> None:
        for task in self.tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise RuntimeError(f"{task.get_name()} failed: {task.exception()!r}")

    async def wait_generation(
        self, generation: int, agents: Sequence[Any] | None = None, within: float = 600
    ) -> list[float]:
        """Wait until each agent's report of ``generation`` is acknowledged by the server;
        returns the monotonic time (CLOCK_MONOTONIC: comparable across processes) at which
        each agent saw that acknowledgement."""
        agents = self.agents if agents is None else agents
        times: list[float] = [0.0] * len(agents)

        async def one(k: int, agent: Any) -> None:
            await agent.wait_for_generation(generation, acked=True)
            times[k] = time.monotonic()

        waits = [asyncio.create_task(one(k, a)) for k, a in enumerate(agents)]
        try:
            async with asyncio.timeout(within):
                await asyncio.gather(*waits)
        except TimeoutError:
            done = sum(1 for t in times if t)
            self.check_tasks()
            raise TimeoutError(
                f"{done}/{len(agents)} agents acknowledged at generation {generation}"
            ) from None
        finally:
            for w in waits:
                w.cancel()
        return times

    async def wait_mqtt(self, agents: Sequence[Any] | None = None, within: float = 300) -> None:
        agents = self.agents if agents is None else agents
        deadline = time.monotonic() + within
        while not all(a.mqtt_connected for a in agents):
            if time.monotonic() > deadline:
                up = sum(1 for a in agents if a.mqtt_connected)
                raise TimeoutError(f"{up}/{len(agents)} agents connected over MQTT")
            self.check_tasks()
            await asyncio.sleep(0.2)

    def mqtt_connected(self) -> int:
        return sum(1 for a in self.agents if a.mqtt_connected)

    async def stop(self, within: float = 60) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await asyncio.gather(*(a.stop() for a in self.agents), return_exceptions=True)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def _worker_main(
    conn: Connection,
    root: str,
    url: str,
    token: str,
    indices: list[int],
    threads: int,
    log_path: str,
) -> None:
    """A fleet worker process: its agents in one event loop, driven over ``conn``. The agents'
    warnings go to ``log_path``."""
    import logging

    logging.basicConfig(
        filename=log_path,
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    raise_nofile()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    asyncio.run(_worker(conn, Path(root), url, token, indices, threads))


async def _worker(
    conn: Connection, root: Path, url: str, token: str, indices: list[int], threads: int
) -> None:
    bigger_default_executor(threads)
    agents = Agents(root, url, token, indices)
    commands = ThreadPoolExecutor(1, thread_name_prefix="commands")
    loop = asyncio.get_running_loop()
    while True:
        command, kwargs = await loop.run_in_executor(commands, conn.recv)
        try:
            reply: Any = None
            if command == "register":
                reply = await agents.register(**kwargs)
            elif command == "start":
                reply = await agents.start(**kwargs)
                gc.collect()
                gc.freeze()  # the simulator's own heap: keep full collections out of timings
            elif command == "wait":
                reply = await agents.wait_generation(**kwargs)
            elif command == "connected":
                reply = agents.mqtt_connected()
            elif command == "stop":
                await agents.stop()
            else:
                raise ValueError(f"unknown command {command!r}")
            conn.send(("ok", reply))
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            conn.send(("error", f"{e!r}\n{traceback.format_exc()}"))
        if command == "stop":
            return


def fleet_root(base: str | None) -> Path:
    """Where the simulated devices live: tmpfs (``/dev/shm``) unless told otherwise. One VM
    disk under ten thousand devices' state would measure that disk: every agent state write
    is a rename over the old file, which ext4 answers by flushing the new data."""
    if base is None:
        base = "/dev/shm" if Path("/dev/shm").is_dir() else None
    return Path(tempfile.mkdtemp(prefix="corral-fleet-devices-", dir=base))


class Fleet:
    """N real agents in ``procs`` worker processes (one unless the file-descriptor limit
    forces more: each agent holds an MQTT connection and a kept-alive HTTPS connection),
    separate from the server's process and from this one, driven from here."""

    def __init__(
        self, root: Path, stack: Stack, token: str, n: int, procs: int = 0, threads: int = 64
    ) -> None:
        self.root = root
        self.stack = stack
        self.n = n
        if procs <= 0:
            per_process = max(1000, (raise_nofile() - 1500) // 2)
            procs = -(-n // per_process)
        self.procs = procs
        self.files: list[DeviceFiles] = []
        ctx = mp.get_context("spawn")
        self._conns: list[Connection] = []
        self._workers: list[Any] = []
        for w in range(procs):
            parent, child = ctx.Pipe()
            indices = list(range(w, n, procs))
            agent_log = str(stack.root / f"agents-{w}.log")
            proc = ctx.Process(
                target=_worker_main,
                args=(child, str(root), stack.url, token, indices, threads, agent_log),
                name=f"fleet-{w}",
                daemon=True,
            )
            proc.start()
            child.close()
            self._conns.append(parent)
            self._workers.append(proc)

    @property
    def pids(self) -> list[int]:
        """The agent processes'."""
        return [int(p.pid) for p in self._workers]

    def every_pid(self) -> list[int]:
        """The server's, the broker's (Mosquitto) and the agent processes'."""
        return [*self.stack.pids(), *self.pids]

    def roles(self) -> dict[int, str]:
        """Who each of :meth:`every_pid` is, to say whose CPU a window's was."""
        roles = dict.fromkeys(self.pids, "agents")
        if self.stack.server.proc is not None:
            roles[self.stack.server.proc.pid] = "server"
        if self.stack.mosquitto_pid is not None:
            roles[self.stack.mosquitto_pid] = "mosquitto"
        return roles

    async def _all(self, command: str, **kwargs: Any) -> list[Any]:
        def call(conn: Connection) -> Any:
            conn.send((command, kwargs))
            status, reply = conn.recv()
            if status != "ok":
                raise RuntimeError(f"fleet worker failed at {command}: {reply}")
            return reply

        return list(await asyncio.gather(*(asyncio.to_thread(call, c) for c in self._conns)))

    async def register(self, concurrency: int = 32) -> float:
        """Register all devices (``concurrency`` threads per worker). Returns seconds."""
        started = time.monotonic()
        replies = await self._all("register", concurrency=concurrency)
        files: list[DeviceFiles | None] = [None] * self.n
        for w, reply in enumerate(replies):
            for i, f in zip(range(w, self.n, self.procs), reply, strict=True):
                files[i] = f
        self.files = [f for f in files if f is not None]
        return time.monotonic() - started

    async def start(self, generation: int, batch: int = 500, **settings: Any) -> float:
        started = time.monotonic()
        per_worker = max(1, batch // self.procs)
        await self._all("start", generation=generation, batch=per_worker, **settings)
        return time.monotonic() - started

    async def wait_generation(self, generation: int, within: float = 600) -> list[float]:
        replies = await self._all("wait", generation=generation, within=within)
        return [t for reply in replies for t in reply]

    async def mqtt_connected(self) -> int:
        return sum(await self._all("connected"))

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self._all("stop")
        for proc in self._workers:
            await asyncio.to_thread(proc.join, 30)
            if proc.is_alive():
                proc.kill()
        if os.environ.get("FLEET_KEEP"):
            log(f"kept {self.root} (FLEET_KEEP)")
        else:
            await asyncio.to_thread(shutil.rmtree, self.root, True)


def bigger_default_executor(threads: int) -> None:
    """Agents run HTTPS calls and file writes through ``asyncio.to_thread``: with thousands of
    agents in one loop the default pool (cores + 4 threads) queues them all."""
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(threads, thread_name_prefix="agents")
    )
