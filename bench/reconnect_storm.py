"""Reconnect storm: a whole connected fleet must reconnect and converge after a server restart.

One run, against ``corral serve`` in its own process (embedded broker, or Mosquitto with
``--broker mosquitto``):

1. setup, not timed: N devices register with the agent's own registration code (threads,
   ``--register-concurrency`` at a time), then run as N real agents (``Agent`` on
   ``SimulatedHost``) in this one process, connected over MQTT and converged to generation 1;
2. the floors, from this process before the agents start, with the devices' own certificates:
   N TLS connects + MQTT CONNECT + SUBSCRIBE to the broker (raw MQTT, all held open until the
   last is up), and N TLS connects (+ ``GET /healthz``) to the HTTPS server;
3. the storm: SIGTERM the server; while it is down the group's spec changes (the server's own
   code on its database, as the API's PATCH does: the change must reach the devices only
   through the restart); start the server again. The figure is the time from starting the
   server until the server's database shows all N devices at the new generation (polled
   read-only every 50 ms). With Mosquitto only the server restarts (the devices' MQTT
   sessions stay up); ``--restart-broker`` also runs the variant that restarts Mosquitto too;
4. memory: the server's VmRSS with N connected after the storm minus its VmRSS freshly started
   with no devices, per device (and Mosquitto's, likewise).

Targets: converge <= 1.5 x floor (Mosquitto), 10,000 devices in <= 30 s, server <= 20 KB per
connected device.

Run: ``.venv/bin/python bench/reconnect_storm.py --broker mosquitto --devices 10000``;
``--quick`` = 100 devices, not recorded.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402

from bench import fleet_run  # noqa: E402
from bench.fleet import Fleet  # noqa: E402
from bench.floors import FloorResult, https_connect_floor, mqtt_connect_floor  # noqa: E402
from bench.procstat import CpuWindow, open_sockets, wait_quiet  # noqa: E402
from bench.profiling import start_py_spy, stop_py_spy  # noqa: E402
from bench.report import append_row, git_describe, log, percentile, today, verdict  # noqa: E402
from bench.stack import STOP_SECONDS, Stack, file_spec, wait_converged  # noqa: E402

TARGET_RATIO = 1.5
TARGET_10K_SECONDS = 30.0
TARGET_KB_PER_DEVICE = 20.0
QUICK = "100 devices, 1 storm, not recorded"


@dataclass
class Storm:
    label: str
    generation: int
    downtime: float  # stop + offline change, seconds
    listening: float  # from start to the server accepting connections
    converged: float  # from start to all N shown at the new generation
    agents_p50: float
    agents_p99: float
    agents_max: float
    in_sync: int
    online: int
    cpu: str  # cores used during the storm, by whom
    shape: str

    def summary(self) -> str:
        return (
            f"{self.label}: all converged {self.converged:.2f}s after start (listening at "
            f"{self.listening:.2f}s; {self.shape}; agents acked p50 {self.agents_p50:.2f}s p99 "
            f"{self.agents_p99:.2f}s max {self.agents_max:.2f}s; down {self.downtime:.1f}s; "
            f"API shows {self.in_sync} in sync, {self.online} online; CPU {self.cpu})"
        )


async def storm(
    stack: Stack,
    fleet: Fleet,
    generation: int,
    restart_broker: bool,
    within: float,
    profile: Path | None,
) -> Storm:
    label = "server + Mosquitto restart" if restart_broker else "server restart"
    server, mosquitto = stack.server, stack.server.mosquitto
    other = await asyncio.to_thread(wait_quiet, fleet.every_pid, 60)
    log(f"storm ({label}) to generation {generation}; other work {other:.2f} cores")
    stopped = time.monotonic()
    await asyncio.to_thread(server.stop, STOP_SECONDS)
    if restart_broker:
        await asyncio.to_thread(mosquitto.stop, STOP_SECONDS)
    changed = await asyncio.to_thread(
        stack.offline_group_spec, file_spec(f"generation {generation}\n")
    )
    if changed != fleet.n:
        raise RuntimeError(f"the offline change reached {changed} of {fleet.n} devices")
    started = time.monotonic()
    downtime = started - stopped
    window = CpuWindow(fleet.every_pid).start()
    if restart_broker:
        await asyncio.to_thread(mosquitto.start, 20)
    proc = await asyncio.to_thread(server.launch)
    spy = start_py_spy(proc.pid, profile / f"server-{generation}.txt") if profile else None
    spy_agents = (
        start_py_spy(fleet.pids[0], profile / f"agents-{generation}.txt") if profile else None
    )
    try:
        await asyncio.to_thread(server.wait_listening, within)
        listening = time.monotonic() - started
        progress = await wait_converged(stack, generation, fleet.n, within, started=started)
        done = progress.done
        busy, mine, other = window.stop()
    finally:
        await asyncio.to_thread(stop_py_spy, spy)
        await asyncio.to_thread(stop_py_spy, spy_agents)
    converged = done - started
    times = await fleet.wait_generation(generation, within=within)
    rel = [t - started for t in times]
    devices = await asyncio.to_thread(stack.devices)
    in_sync = sum(1 for d in devices if d["observed_generation"] == d["generation"] == generation)
    online = sum(1 for d in devices if d["online"])
    cpu = fleet_run.cpu_by_role(window, fleet, other, busy)
    result = Storm(
        label, generation, downtime, listening, converged,
        percentile(rel, 50), percentile(rel, 99), max(rel), in_sync, online, cpu,
        progress.shape(),
    )  # fmt: skip
    log(result.summary())
    fleet_run.log_hot(profile, generation, 8)
    return result


async def settle_rss(stack: Stack, seconds: float = 3.0) -> tuple[int, int | None]:
    await asyncio.sleep(seconds)
    log(
        f"server VmRSS {stack.server_rss() / 1024:.0f} MiB, {open_sockets(stack.server.pid)} "
        "sockets open"
    )
    return stack.server_rss(), stack.broker_rss()


async def run(args: argparse.Namespace) -> int:
    n = args.devices
    began = time.monotonic()
    stack = await fleet_run.start_stack(args)
    fleet: Fleet | None = None
    results: list[Storm] = []
    variants: list[Storm] = []
    try:
        fresh_rss, fresh_broker = await settle_rss(stack)
        log(f"server up (data {stack.data}); fresh VmRSS {fresh_rss / 1024:.1f} MiB")
        fleet = await fleet_run.register(stack, args)

        floors: list[FloorResult] = []
        floor_cpu: list[str] = []
        for _ in range(args.floor_rounds):
            for kind in ("mqtt", "https"):
                other = await asyncio.to_thread(wait_quiet, fleet.every_pid, 60)
                window = CpuWindow(fleet.every_pid).start()
                if kind == "mqtt":
                    result, _ = await mqtt_connect_floor(
                        stack.server.mqtt_port, fleet.files, args.floor_concurrency
                    )
                else:
                    result = await https_connect_floor(
                        stack.server.port, fleet.files, args.floor_concurrency
                    )
                busy, _, other = window.stop()
                cpu = fleet_run.cpu_by_role(window, fleet, other)
                log(f"floor {result.summary()}; CPU {cpu}")
                floors.append(result)
                floor_cpu.append(f"{kind} {cpu}")
        mqtt_floor = min(f.seconds for f in floors if f.what.startswith("MQTT"))
        https_floor = min(f.seconds for f in floors if f.what.startswith("HTTPS"))
        floor = mqtt_floor + https_floor
        floor_errors = sum(f.errors for f in floors)

        seconds = await fleet.start(1, batch=args.batch)
        log(f"{n} agents converged and connected in {seconds:.1f}s")
        before_rss, before_broker = await settle_rss(stack)

        generation = 1
        for _ in range(args.storms):
            generation += 1
            results.append(await storm(stack, fleet, generation, False, args.within, args.profile))
            if len(results) == 1:
                after_rss, after_broker = await settle_rss(stack, 5)
        if args.restart_broker and args.broker == "mosquitto":
            generation += 1
            variants.append(await storm(stack, fleet, generation, True, args.within, None))
        steady_rss = steady_broker = None
        sockets = open_sockets(stack.server.pid)
        if args.steady > 0:
            log(f"waiting {args.steady:.0f}s for idle keep-alive connections to close")
            steady_rss, steady_broker = await settle_rss(stack, args.steady)
        steady_sockets = open_sockets(stack.server.pid)
        connected = await fleet.mqtt_connected()
    finally:
        if fleet is not None:
            await fleet.stop()
        await asyncio.to_thread(stack.close)

    ordered = sorted(results, key=lambda r: r.converged)
    main = ordered[len(ordered) // 2]  # the median storm (upper median of an even count)
    figure = main.converged
    ratio = figure / floor
    kb_per_device = (after_rss - fresh_rss) / n * 1.024
    steady_kb = (steady_rss - fresh_rss) / n * 1.024 if steady_rss else None
    broker_note = ""
    if after_broker is not None and fresh_broker is not None:
        broker_note = (
            f"; Mosquitto VmRSS {after_broker / 1024:.0f} MiB = "
            f"{(after_broker - fresh_broker) / n * 1.024:.1f} KB/device"
        )
    steady_note = ""
    if steady_kb is not None and steady_rss is not None:
        steady_note = (
            f"; {args.steady:.0f} s later (server sockets {sockets} -> {steady_sockets}, "
            f"{connected} devices on MQTT): {steady_rss / 1024:.0f} MiB = {steady_kb:.1f} "
            "KB/device"
        )
    ok_ratio = ratio <= TARGET_RATIO
    ok_time = figure <= TARGET_10K_SECONDS * max(1.0, n / 10_000)
    ok_mem = kb_per_device <= TARGET_KB_PER_DEVICE
    ok = all(r.in_sync == n for r in results + variants)
    spread = ", ".join(f"{r.converged:.2f}" for r in results)
    variant_text = "; ".join(r.summary() for r in variants)
    rev = git_describe()
    print(
        f"reconnect storm ({args.broker}, {n} devices, {rev}): {figure:.2f}s to all "
        f"converged after {main.label} (median of {len(results)}: {spread}) | floor "
        f"{floor:.2f}s (MQTT connect+sub {mqtt_floor:.2f}s + HTTPS connect {https_floor:.2f}s) "
        f"| ratio {ratio:.2f}x [<= {TARGET_RATIO}x: {verdict(ok_ratio)}; <= 30 s per 10k: "
        f"{verdict(ok_time)}] | server VmRSS {after_rss / 1024:.0f} MiB with {n} connected, "
        f"fresh {fresh_rss / 1024:.0f} MiB = {kb_per_device:.1f} KB/device "
        f"[<= {TARGET_KB_PER_DEVICE:.0f}: {verdict(ok_mem)}]{steady_note}{broker_note} | "
        f"{main.summary()}"
        + (f" | {variant_text}" if variant_text else "")
        + f" | floor CPU {'; '.join(floor_cpu)} | {time.monotonic() - began:.0f}s",
        flush=True,
    )
    if not ok:
        log("not every device was in sync per the API")
    if args.quick or args.no_record or args.profile:
        log("not recorded (quick, --no-record or --profile)")
        return 0 if ok else 1
    other = max(float(r.cpu.rsplit("other ", 1)[1].split()[0]) for r in results)
    disturbed = f"; DISTURBED: other work up to {other:.2f} cores" if other > 0.3 else ""
    append_row(
        [
            today(),
            f"reconnect storm, {args.broker}, {n} devices (bench/reconnect_storm.py)",
            f"{figure:.2f} s to all {n} converged after {main.label} (median of "
            f"{len(results)}: {spread}); server {kb_per_device:.1f} KB/device "
            f"({after_rss / 1024:.0f} MiB connected, {fresh_rss / 1024:.0f} MiB fresh)",
            f"floor {floor:.2f} s = {n} MQTT TLS connect+CONNECT+SUBSCRIBE {mqtt_floor:.2f} s "
            f"+ {n} HTTPS TLS connect+GET {https_floor:.2f} s (one asyncio process)",
            f"{ratio:.2f}x",
            f"<= {TARGET_RATIO}x: {verdict(ok_ratio)}; <= 30 s/10k: {verdict(ok_time)}; "
            f"<= 20 KB/device: {verdict(ok_mem)}",
            f"listening {main.listening:.2f} s after start; {main.shape}; agents acked p50 "
            f"{main.agents_p50:.2f} s p99 {main.agents_p99:.2f} s; down {main.downtime:.1f} s; "
            f"CPU {main.cpu}; RSS before storm {before_rss / 1024:.0f} MiB"
            + (f", Mosquitto {before_broker / 1024:.0f} MiB" if before_broker else "")
            + steady_note
            + broker_note
            + f"; floor errors {floor_errors}; API in sync {main.in_sync}/{n}, online "
            f"{main.online}"
            + (f"; {variant_text}" if variant_text else "")
            + disturbed
            + f"; {fleet.procs if fleet else 1} agent process(es); {rev}"
            + fleet_run.notes(args),
        ]
    )
    log("appended a row to BENCHMARKS.md")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = fleet_run.options(__doc__, QUICK)
    parser.add_argument("--restart-broker", action="store_true", help="also restart Mosquitto")
    parser.add_argument("--storms", type=int, help="server restarts (default 3, quick 1)")
    parser.add_argument(
        "--steady",
        type=float,
        help="then wait this long and measure RSS again (default 90: aiohttp closes idle "
        "keep-alive connections after 75 s; quick 0)",
    )
    args = fleet_run.parse(parser, argv)
    args.storms = args.storms or (1 if args.quick else 3)
    if args.steady is None:
        args.steady = 0.0 if args.quick else 90.0
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
