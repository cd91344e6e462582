"""``corral-agent``: the device's command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shlex
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from node_image.agent import clock, firstboot, memory, network, seedsource
from node_image.agent import seed as seed_mod
from node_image.agent.settings import AgentSettings, Identity
from node_image.agent.state import CorruptStateFile, StateDir
from node_image.agent.transport import Backoff
from node_image.boot import BootLayout, RebootRequested
from node_image.errors import AgentError
from node_image.host import (
    BOOT_ID,
    CMDLINE,
    DEFAULT_BOOT,
    REBOOT,
    Host,
    Kernel,
    LinuxHost,
    SimulatedHost,
)

if TYPE_CHECKING:
    from node_image.agent import daemon

# A first boot registers before it loads the daemon, its reconcilers and MQTT (imported in
# the functions that use them): under emulation that is seconds of the boot-to-registered
# time, and the agent re-executes after registering anyway.

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = "/var/lib/corral-agent"


def cmd_register(args: argparse.Namespace) -> int:
    """One registration attempt, with the seed named (or found: ``--seed auto``)."""
    host = make_host(args)
    if args.seed == seedsource.AUTO:
        found = seedsource.find(host, seedsource.AUTO, partitions=not args.simulated)
        if found is None:
            raise AgentError("no seed found (not seeded, no corral.seed=, no CORRAL partition)")
        seed = found.seed
    else:
        seed = seed_mod.load(Path(args.seed))
    state = StateDir(Path(args.state_dir))
    firstboot.prepare(seed, host)
    result = firstboot.register_once(seed, state, host, args.time_sync_wait)
    sys.stdout.write(
        json.dumps(
            {
                "device_id": result.device_id,
                "name": result.name,
                "created": result.created,
                "refreshed": result.refreshed,
            }
        )
        + "\n"
    )
    return 0


async def run_agent(agent: daemon.Agent) -> None:
    loop = asyncio.get_running_loop()
    # One device needs few threads for its file and HTTPS work; each idle pool thread
    # otherwise keeps a stack and a malloc arena resident (the idle target is 40 MB).
    loop.set_default_executor(ThreadPoolExecutor(max_workers=2, thread_name_prefix="agent"))
    stopping: list[asyncio.Task[None]] = []

    def on_signal(signum: int) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        stopping.append(loop.create_task(agent.stop()))

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    await agent.run()


class _Stopped(BaseException):
    """SIGTERM or SIGINT while registering before the daemon starts."""


def _stop(signum: int, frame: FrameType | None) -> None:
    raise _Stopped(signal.Signals(signum).name)


def register_first(args: argparse.Namespace, state: StateDir, host: Host) -> bool:
    """First boot: find the seed (waiting for one), apply it and register in this process,
    retrying with backoff like the daemon would.

    False when a signal stopped it. The caller then re-executes the agent: what registration
    loads (cryptography, pyudev, the facts) stays resident in a Python process once imported,
    and the agent that runs for months starts afresh without it, like every later boot.
    """
    backoff = Backoff(5.0, AgentSettings.register_backoff_cap, AgentSettings.jitter)
    previous = {s: signal.signal(s, _stop) for s in (signal.SIGTERM, signal.SIGINT)}
    log.info("not registered: looking for the seed")
    try:
        found = seedsource.wait_for_seed(
            host, args.seed, partitions=not args.simulated, backoff=Backoff(5.0, 60.0)
        )
        assert found is not None  # noqa: S101 - without a stop event it waits until found
        firstboot.prepare(found.seed, host)
        while True:
            network.wait_for_route(found.seed.server)
            try:
                result = firstboot.register_once(found.seed, state, host, args.time_sync_wait)
            except CorruptStateFile:
                raise
            except AgentError as e:
                delay = backoff.next()
                log.warning("registration failed: %s; retrying in %.0fs", e, delay)
                time.sleep(delay)
                continue
            log.info("registered as %s (%s); restarting the agent", result.device_id, result.name)
            return True
    except _Stopped as e:
        log.info("signal %s: stopping", e)
        return False
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def make_host(args: argparse.Namespace) -> Host:
    """The machine to manage: a simulated one in a directory, or this one."""
    if args.simulated:
        return SimulatedHost(Path(args.simulated))
    kernel = Kernel(
        cmdline=Path(args.kernel_cmdline),
        boot_id=Path(args.boot_id_file),
        reboot=tuple(shlex.split(args.reboot_command)),
    )
    return LinuxHost(BootLayout.under(Path(args.boot_dir)), kernel)


def cmd_reconcile(args: argparse.Namespace) -> int:
    """One pass of every reconciler over a spec file, without a server; prints the
    conditions as JSON, or ``{"rebooting": true}`` when a reconciler rebooted the host."""
    from node_image.agent.context import ReconcileContext, run_reconcile
    from node_image.agent.reconcilers import build
    from registration.desired import Condition, Spec

    host = make_host(args)
    state = StateDir(Path(args.state_dir), fsync=host.durable)
    state.ensure()
    spec = Spec.model_validate_json(Path(args.spec).read_bytes())

    async def once() -> list[Condition]:
        found = []
        for reconciler in build(state):
            ctx = ReconcileContext(reconciler.name, host, state)
            found.append(await run_reconcile(reconciler, spec, ctx))
        return found

    try:
        conditions = asyncio.run(once())
    except RebootRequested as e:
        log.warning("%s", e)
        sys.stdout.write(json.dumps({"rebooting": True, "slot": e.slot}) + "\n")
        return 0
    found = [c.model_dump(mode="json") for c in conditions]
    sys.stdout.write(json.dumps({"conditions": found}) + "\n")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    host = make_host(args)
    state = StateDir(Path(args.state_dir))
    if args.seed is not None and state.read_identity() is None:
        # A registered device does not look for the seed (nor load what parsing it takes).
        if not register_first(args, state, host):
            return 0
        if state.read_identity() is None:  # never re-exec into another registration
            raise AgentError(f"registered, but {state.root} holds no complete identity")
        # The same process (pid, systemd unit), started anew now that it has an identity.
        argv = [sys.executable, "-m", "node_image.agent.cli", *args.argv]
        os.execv(sys.executable, argv)  # noqa: S606 - this very program, its own arguments
    from node_image.agent import daemon
    from node_image.agent.install import install_if_seeded

    try:
        install_if_seeded(args.seed, state, host)
    except RebootRequested:
        log.warning("the machine is rebooting into the installed system; the agent exits")
        return 0
    identity = Identity.load(state)
    if identity is not None:
        network.wait_for_route(identity.api, network.ROUTE_WAIT)
    settings = AgentSettings(
        poll_interval=args.poll_interval,
        poll_interval_connected=max(args.poll_interval, AgentSettings.poll_interval_connected),
        mqtt=not args.no_mqtt,
    )
    agent = daemon.Agent(state.root, host, None, settings)
    memory.release()  # what importing and building the agent freed
    try:
        asyncio.run(run_agent(agent))
    except RebootRequested as e:
        if isinstance(host, SimulatedHost):
            restart_simulated(e)
        log.warning("the machine is rebooting; the agent exits")  # systemd stops the rest
    return 0


def restart_simulated(reboot: RebootRequested) -> None:
    """A simulated reboot: the same command again, in a fresh process, booted into the slot
    the simulated GRUB chose (its directory records it)."""
    log.warning("simulated reboot into slot %s: restarting the agent", reboot.slot)
    argv = [sys.executable, "-m", "node_image.agent.cli", *sys.argv[1:]]
    os.execv(sys.executable, argv)  # noqa: S606 - our own interpreter, our own arguments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="corral-agent", description="Corral device agent")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    reg = sub.add_parser("register", help="register this device with a seed file")
    reg.add_argument(
        "--seed", required=True, help="seed JSON (server URL and token), or 'auto' to find it"
    )
    reg.add_argument("--state-dir", default=DEFAULT_STATE_DIR)
    reg.add_argument("--simulated", metavar="DIR", help="register a simulated device kept in DIR")
    add_machine_flags(reg)
    reg.set_defaults(func=cmd_register)
    run = sub.add_parser("run", help="run the agent: register if needed, then reconcile")
    run.add_argument("--state-dir", default=DEFAULT_STATE_DIR)
    run.add_argument(
        "--seed",
        help="seed JSON, used only while the device has no identity; 'auto' (or a file that "
        "does not exist) looks on the kernel command line, the boot medium and CORRAL/CIDATA "
        "partitions, and waits until one turns up",
    )
    run.add_argument(
        "--simulated", metavar="DIR", help="manage a simulated device kept in DIR, not this host"
    )
    run.add_argument(
        "--poll-interval",
        type=float,
        default=AgentSettings.poll_interval,
        help="seconds between spec pulls while MQTT is down (default %(default)s)",
    )
    run.add_argument("--no-mqtt", action="store_true", help="poll over HTTPS only")
    add_machine_flags(run)
    run.set_defaults(func=cmd_run)
    once = sub.add_parser(
        "reconcile", help="apply a spec file once, without a server, and print the conditions"
    )
    once.add_argument("--spec", required=True, help="the spec, as JSON")
    once.add_argument("--state-dir", default=DEFAULT_STATE_DIR)
    once.add_argument("--simulated", metavar="DIR", help="act on a simulated device in DIR")
    add_machine_flags(once)
    once.set_defaults(func=cmd_reconcile)
    return parser


def add_machine_flags(parser: argparse.ArgumentParser) -> None:
    """Where this machine keeps its slots and GRUB environment, and how its kernel says how
    it booted. The defaults are a real device's; tests that simulate boots change them."""
    group = parser.add_argument_group("boot (real machine)")
    group.add_argument(
        "--boot-dir",
        default=str(DEFAULT_BOOT),
        help="grubenv and slots/A, slots/B (on the state partition; default %(default)s)",
    )
    group.add_argument("--kernel-cmdline", default=str(CMDLINE), help=argparse.SUPPRESS)
    group.add_argument("--boot-id-file", default=str(BOOT_ID), help=argparse.SUPPRESS)
    group.add_argument("--reboot-command", default=shlex.join(REBOOT), help=argparse.SUPPRESS)
    group.add_argument(
        "--time-sync-wait",
        type=float,
        default=clock.SYNC_WAIT,
        help="seconds to wait for time sync when the clock is impossible (default %(default)s)",
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except (AgentError, OSError) as e:
        if args.debug:
            raise
        sys.stderr.write(f"corral-agent: error: {e}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
