"""What the fleet benches (``reconnect_storm.py``, ``fanout.py``) share: their common options,
the setup (the stack, the bench group, N devices registered) and how they report whose CPU a
window took and where the profiled processes spent it."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from bench.fleet import Fleet, fleet_root
from bench.procstat import CpuWindow, raise_nofile
from bench.profiling import top_functions
from bench.report import log
from bench.stack import Stack, file_spec


def add_fleet_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--broker", choices=["embedded", "mosquitto"], default="mosquitto")
    parser.add_argument("--devices", type=int, help="default 1000 (quick: 100)")
    parser.add_argument("--threads", type=int, default=64, help="agent process executor threads")
    parser.add_argument(
        "--procs", type=int, default=0, help="agent processes (default: 1 unless fds forbid)"
    )
    parser.add_argument("--register-concurrency", type=int, default=32)
    parser.add_argument("--state-dir", help="where simulated devices live (default /dev/shm)")
    parser.add_argument("--floor-concurrency", type=int, default=256)
    parser.add_argument("--floor-rounds", type=int, default=2, help="best of (default 2)")
    parser.add_argument("--batch", type=int, default=500, help="agents started at a time")
    parser.add_argument("--within", type=float, default=600, help="convergence timeout, s")
    parser.add_argument("--profile", type=Path, help="py-spy server and agents into DIR")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="K=V",
        help="extra environment of the server (experiments; shown in the row's notes)",
    )
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--note", default="")


def fleet_stack(args: argparse.Namespace) -> Stack:
    """The stack (not started yet), with this process's file limit raised for N devices."""
    log(f"RLIMIT_NOFILE {raise_nofile()}; {args.devices} devices, broker {args.broker}")
    env = {"CORRAL_REGISTER_FAILURES_PER_MINUTE": "1000000"}
    env.update(kv.split("=", 1) for kv in args.server_env)
    return Stack(args.broker, env=env)


async def register_fleet(stack: Stack, args: argparse.Namespace) -> Fleet:
    """The bench group at generation 1, and ``--devices`` devices registered to it (their
    agents not started yet)."""
    n = args.devices
    token = await asyncio.to_thread(stack.create_fleet_group, file_spec("generation 1\n"))
    fleet = Fleet(fleet_root(args.state_dir), stack, token, n, args.procs, args.threads)
    log(f"agents in {fleet.procs} process(es): pids {fleet.pids}")
    seconds = await fleet.register(args.register_concurrency)
    log(f"registered {n} in {seconds:.1f}s ({n / seconds:.0f}/s)")
    return fleet


def cpu_by_role(window: CpuWindow, fleet: Fleet) -> str:
    """After ``window.stop()``: cores used by the server, the broker, the agents and the
    bench in the window."""
    parts = window.by_name(fleet.roles())
    return ", ".join(f"{k} {v:.2f}" for k, v in sorted(parts.items()))


def log_hot_functions(profile: Path | None, generation: int, n: int) -> None:
    """The ``n`` functions with the most self time in each profile of ``generation``."""
    if profile is None:
        return
    for who in ("server", "agents"):
        path = profile / f"{who}-{generation}.txt"
        if path.exists():
            tops = ", ".join(f"{p:.0f}% {f}" for f, p in top_functions(path, n))
            log(f"  py-spy {who} self time: {tops}")
