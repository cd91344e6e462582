"""Fan-out: one spec change to a group of N connected devices, until all N have acknowledged.

One run, against ``corral serve`` in its own process (embedded broker, or Mosquitto with
``--broker mosquitto``):

1. setup, not timed: N devices register with the agent's own registration code, then run as N
   real agents (``Agent`` on ``SimulatedHost``) in one process of their own, connected over MQTT
   and converged to generation 1;
2. the baseline, before the agents start, from one asyncio process with the devices' own
   certificates over N MQTT connections opened beforehand (raw MQTT 3.1.1, no client library):
   each device re-subscribes to its nudge topic and receives the retained nudge the server
   published for it (N deliveries from the broker), and publishes its presence, QoS 1 and
   retained as the agent does (N publishes to the broker, which the server's channel receives
   and applies); timed until all N have both: the MQTT work a fan-out cannot do without;
3. ``--rounds`` times (default 3): ``PATCH /api/v1/groups/fleet`` with a new file in the spec
   (what ``corral group set`` sends), timed from sending it until the server's database shows
   all N devices at the new generation (polled read-only every 50 ms); the agents' own
   acknowledgement times give the spread. The figure is the median round.

Each agent's path: nudge (MQTT) -> GET spec (HTTPS; a fresh mTLS connection, as the server
closes idle keep-alives long before the next change) -> write the file -> status (MQTT) -> the
server applies it -> acknowledgement nudge (MQTT). So a second baseline, the "pull floor", is
N fresh mTLS connects + ``GET /healthz`` to the same server from one asyncio process.

Target: 10,000 devices in <= 10 s with Mosquitto.

Run: ``.venv/bin/python bench/fanout.py --broker mosquitto --devices 10000``; ``--quick`` = 100
devices, 1 round, not recorded.
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
from bench.floors import (  # noqa: E402
    FloorResult,
    close_mqtt,
    https_connect_floor,
    mqtt_connect_floor,
    mqtt_exchange_floor,
)
from bench.procstat import CpuWindow, wait_quiet  # noqa: E402
from bench.profiling import start_py_spy, stop_py_spy  # noqa: E402
from bench.report import (  # noqa: E402
    append_row,
    git_describe,
    log,
    median,
    percentile,
    today,
    verdict,
)
from bench.stack import Stack, file_spec, wait_converged  # noqa: E402

TARGET_10K_SECONDS = 10.0
QUICK = "100 devices, 1 round, not recorded"


@dataclass
class Round:
    generation: int
    patch: float  # seconds until the PATCH answered (recompute + every nudge published)
    converged: float  # seconds until the server showed all N at the new generation
    agents_p50: float
    agents_p99: float
    in_sync: int
    cpu: str
    other: float
    shape: str

    def summary(self) -> str:
        return (
            f"generation {self.generation}: all acknowledged in {self.converged:.2f}s (PATCH "
            f"answered at {self.patch:.2f}s; {self.shape}; agents acked p50 "
            f"{self.agents_p50:.2f}s p99 {self.agents_p99:.2f}s; API in sync {self.in_sync}; "
            f"CPU {self.cpu})"
        )


def _patch(stack: Stack, generation: int) -> tuple[dict[str, object], float]:
    answer = stack.set_group_spec(file_spec(f"generation {generation}\n"))
    return answer, time.monotonic()


async def fan_out(
    stack: Stack, fleet: Fleet, generation: int, within: float, profile: Path | None
) -> Round:
    quiet = await asyncio.to_thread(wait_quiet, fleet.every_pid, 60)
    if quiet >= 0.2:
        log(f"other work still uses {quiet:.2f} cores")
    spies = []
    if profile:
        spies = [
            start_py_spy(stack.server.pid, profile / f"server-{generation}.txt"),
            start_py_spy(fleet.pids[0], profile / f"agents-{generation}.txt"),
        ]
        await asyncio.sleep(1.0)
    window = CpuWindow(fleet.every_pid).start()
    started = time.monotonic()
    try:
        patch_task = asyncio.create_task(asyncio.to_thread(_patch, stack, generation))
        progress = await wait_converged(stack, generation, fleet.n, within, started=started)
        done = progress.done
        busy, _, other = window.stop()
        answer, patched = await patch_task
    finally:
        for spy in spies:
            await asyncio.to_thread(stop_py_spy, spy)
    if answer.get("devices_changed") != fleet.n:
        raise RuntimeError(f"PATCH changed {answer.get('devices_changed')} of {fleet.n}")
    times = await fleet.wait_generation(generation, within=within)
    rel = [t - started for t in times]
    devices = await asyncio.to_thread(stack.devices)
    in_sync = sum(1 for d in devices if d["observed_generation"] == d["generation"] == generation)
    cpu = fleet_run.cpu_by_role(window, fleet, other, busy)
    result = Round(
        generation,
        patched - started,
        done - started,
        percentile(rel, 50),
        percentile(rel, 99),
        in_sync,
        cpu,
        other,
        progress.shape(),
    )
    log(result.summary())
    fleet_run.log_hot(profile, generation, 10)
    return result


async def run(args: argparse.Namespace) -> int:
    n = args.devices
    began = time.monotonic()
    stack = await fleet_run.start_stack(args)
    fleet: Fleet | None = None
    rounds: list[Round] = []
    try:
        fleet = await fleet_run.register(stack, args)

        # Generation 2 before any agent runs: every device then has a retained nudge at the
        # broker (registration publishes none), which the baseline's subscriptions receive.
        answer = await asyncio.to_thread(stack.set_group_spec, file_spec("generation 2\n"))
        if answer["devices_changed"] != n:
            raise RuntimeError(f"generation 2 reached {answer['devices_changed']} of {n}")
        floors: list[FloorResult] = []
        for _ in range(args.floor_rounds):
            await asyncio.to_thread(wait_quiet, fleet.every_pid, 30)
            connect, conns = await mqtt_connect_floor(
                stack.server.mqtt_port,
                fleet.files,
                args.floor_concurrency,
                keep=True,
                subscribe=False,
            )
            try:
                exchange = await mqtt_exchange_floor(conns)
            finally:
                await close_mqtt(conns)
            log(f"floor {exchange.summary()} (connects untimed: {connect.summary()})")
            floors.append(exchange)
        floor = min((f.seconds for f in floors), default=float("nan"))
        floor_errors = sum(f.errors for f in floors)
        # A second baseline: each agent pulls its spec over a fresh mTLS connection (the
        # server closes idle keep-alives long before the next change), so N fresh TLS
        # connects + GET /healthz to the same server bound a fan-out as well.
        pulls: list[FloorResult] = []
        for _ in range(args.floor_rounds):
            await asyncio.to_thread(wait_quiet, fleet.every_pid, 30)
            pulls.append(
                await https_connect_floor(stack.server.port, fleet.files, args.floor_concurrency)
            )
            log(f"pull floor {pulls[-1].summary()}")
        pull_floor = min((f.seconds for f in pulls), default=float("nan"))

        seconds = await fleet.start(2, batch=args.batch)
        log(f"{n} agents converged and connected in {seconds:.1f}s")
        for k in range(args.rounds):
            rounds.append(await fan_out(stack, fleet, 3 + k, args.within, args.profile))
    finally:
        if fleet is not None:
            await fleet.stop()
        await asyncio.to_thread(stack.close)

    figure = median([r.converged for r in rounds])
    pull_ratio = figure / pull_floor
    middle = sorted(rounds, key=lambda r: r.converged)[len(rounds) // 2]
    ratio = figure / floor
    ok_time = figure <= TARGET_10K_SECONDS * max(1.0, n / 10_000)
    ok = all(r.in_sync == n for r in rounds)
    spread = ", ".join(f"{r.converged:.2f}" for r in rounds)
    patch = median([r.patch for r in rounds])
    p99 = median([r.agents_p99 for r in rounds])
    other = max(r.other for r in rounds)
    rev = git_describe()
    print(
        f"fan-out ({args.broker}, {n} devices, {len(rounds)} round(s), {rev}): "
        f"{figure:.2f}s from PATCH to all {n} acknowledged (rounds {spread}; PATCH answered "
        f"after {patch:.2f}s; agents p99 {p99:.2f}s) | floor {floor:.2f}s = {n} MQTT "
        f"nudge-in + presence-out exchanges; pull floor {pull_floor:.2f}s = {n} fresh mTLS "
        f"connects + GET | ratio {ratio:.2f}x (to the pull floor {pull_ratio:.2f}x) "
        f"[<= 10 s per 10k: {verdict(ok_time)}] | {middle.summary()} | "
        f"{time.monotonic() - began:.0f}s",
        flush=True,
    )
    if args.quick or args.no_record or args.profile:
        log("not recorded (quick, --no-record or --profile)")
        return 0 if ok else 1
    disturbed = f"; DISTURBED: other work up to {other:.2f} cores" if other > 0.3 else ""
    append_row(
        [
            today(),
            f"fan-out, {args.broker}, {n} devices (bench/fanout.py)",
            f"{figure:.2f} s from PATCH to all {n} acknowledged (median of {len(rounds)}: "
            f"{spread})",
            f"floor {floor:.2f} s = {n} raw-MQTT exchanges (retained nudge in + QoS 1 presence "
            f"out) over open connections, one asyncio process; pull floor {pull_floor:.2f} s = "
            f"{n} fresh mTLS connects + GET /healthz",
            f"{ratio:.2f}x (to the pull floor {pull_ratio:.2f}x)",
            f"<= 10 s/10k: {verdict(ok_time)}",
            f"PATCH answered after {patch:.2f} s; {middle.shape}; agents "
            f"acked p99 {p99:.2f} s; "
            f"{middle.cpu}; floor errors {floor_errors}; API in sync "
            f"{min(r.in_sync for r in rounds)}/{n}{disturbed}; {rev}" + fleet_run.notes(args),
        ]
    )
    log("appended a row to BENCHMARKS.md")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = fleet_run.options(__doc__, QUICK)
    parser.add_argument("--rounds", type=int, help="spec changes (default 3, quick 1)")
    args = fleet_run.parse(parser, argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
