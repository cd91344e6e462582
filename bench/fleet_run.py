"""What the fleet benches (``reconnect_storm.py``, ``fanout.py``) share: their common options,
the setup (the stack, the bench group, N devices registered) and how they report whose CPU a
window took and where the profiled processes spent it."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

from bench.fleet import Fleet, fleet_root
from bench.procstat import CpuWindow, raise_nofile
from bench.profiling import top_functions
from bench.report import log
from bench.stack import Stack, file_spec


def options(doc: str, quick: str) -> argparse.ArgumentParser:
    """The options every fleet bench has; ``quick`` says what its ``--quick`` does."""
    parser = argparse.ArgumentParser(description=doc.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help=quick)
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
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The options, with the common defaults filled in."""
    args = parser.parse_args(argv)
    args.devices = args.devices or (100 if args.quick else 1000)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    return args


def notes(args: argparse.Namespace) -> str:
    """The end of a BENCHMARKS.md row's notes: the server's extra environment, --note."""
    return (f"; server env {' '.join(args.server_env)}" if args.server_env else "") + (
        f"; {args.note}" if args.note else ""
    )


async def start_stack(args: argparse.Namespace) -> Stack:
    """The stack, started, with this process's file limit raised for N devices first (the
    server and Mosquitto inherit it). ``close()`` it when done."""
    log(f"RLIMIT_NOFILE {raise_nofile()}; {args.devices} devices, broker {args.broker}")
    env = {"CORRAL_REGISTER_FAILURES_PER_MINUTE": "1000000"}
    env.update(kv.split("=", 1) for kv in args.server_env)
    stack = Stack(args.broker, env=env)
    try:
        await asyncio.to_thread(stack.start)
    except BaseException:
        await asyncio.to_thread(stack.close)
        raise
    return stack


async def register(stack: Stack, args: argparse.Namespace) -> Fleet:
    """The bench group at generation 1, and ``--devices`` devices registered to it (their
    agents not started yet)."""
    n = args.devices
    token = await asyncio.to_thread(stack.create_fleet_group, file_spec("generation 1\n"))
    fleet = Fleet(fleet_root(args.state_dir), stack, token, n, args.procs, args.threads)
    log(f"agents in {fleet.procs} process(es): pids {fleet.pids}")
    seconds = await fleet.register(args.register_concurrency)
    log(f"registered {n} in {seconds:.1f}s ({n / seconds:.0f}/s)")
    return fleet


def cpu_by_role(window: CpuWindow, fleet: Fleet, other: float, busy: float | None = None) -> str:
    """After ``window.stop()``: cores used in the window by the server, the broker, the
    agents, the bench and ``other`` work (and by the whole machine: ``busy``)."""
    parts = window.by_name(fleet.roles())
    text = ", ".join(f"{k} {v:.2f}" for k, v in sorted(parts.items())) + f", other {other:.2f}"
    return text + (f" (machine {busy:.2f} of {os.cpu_count()} cores)" if busy is not None else "")


def log_hot(profile: Path | None, generation: int, n: int) -> None:
    """The ``n`` functions with the most self time in each profile of ``generation``."""
    if profile is None:
        return
    for who in ("server", "agents"):
        path = profile / f"{who}-{generation}.txt"
        if path.exists():
            tops = ", ".join(f"{p:.0f}% {f}" for f, p in top_functions(path, n))
            log(f"  py-spy {who} self time: {tops}")
