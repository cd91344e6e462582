"""Idle footprint of one real agent: ``corral-agent run`` as its own process, registered with a
real server (embedded broker) and converged, then left alone.

Two agents run side by side, both the real ``corral-agent run`` on a simulated host:

- **restarted**: registered beforehand by ``corral-agent register``, so ``run`` starts with an
  identity (every boot after the first, the steady state of a fleet);
- **first boot**: ``run --seed`` registers in the same process first (``requests`` and
  ``cryptography`` stay loaded for the life of that process).

Once both are converged (the server shows them online and in sync) and settled, their VmRSS
and CPU (utime + stime from /proc/<pid>/stat) are measured over ``--seconds`` (default 60),
next to the baseline: a bare ``python -c "import time; time.sleep(...)"`` of the same
interpreter, started at the same time, whose VmRSS is the floor of any Python process.

Targets: RSS <= 40 MB, CPU <= 0.5 % (of one core).

The agents run with the environment the device's systemd unit gives them
(``build/systemd/corral-agent.service``: ``PYTHONOPTIMIZE=2``, no docstrings kept);
``--bare-env`` runs them without it. Their bytecode is compiled once beforehand into a cache of
the bench's own (``PYTHONPYCACHEPREFIX``), as a device's first start leaves it cached; without
that, a machine with ``PYTHONDONTWRITEBYTECODE`` set compiles every module at every start.

Run: ``.venv/bin/python bench/agent_idle.py [--seconds 60] [--quick]`` (quick = 10 s, not
recorded).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402

from bench.procstat import cpu_seconds, rss_kib  # noqa: E402
from bench.profiling import BIN, start_py_spy, stop_py_spy, top_functions  # noqa: E402
from bench.report import append_row, git_describe, log, today, verdict  # noqa: E402
from bench.stack import Stack, file_spec  # noqa: E402
from tests.server_process import tree_env  # noqa: E402
from tests.waiting import wait_until  # noqa: E402

UNIT = Path(__file__).resolve().parent.parent / "build" / "systemd" / "corral-agent.service"
TARGET_RSS_MB = 40.0
TARGET_CPU_PCT = 0.5


def unit_environment(unit: Path = UNIT) -> dict[str, str]:
    """The ``Environment=NAME=VALUE`` lines of the agent's systemd unit."""
    found = {}
    for line in unit.read_text().splitlines():
        if line.startswith("Environment="):
            name, _, value = line.removeprefix("Environment=").partition("=")
            found[name] = value
    return found


def with_bytecode_cache(env: dict[str, str], cache: Path) -> dict[str, str]:
    """``env`` with a bytecode cache in ``cache``, warmed by importing the agent once."""
    env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(cache)
    subprocess.run(
        [sys.executable, "-c", "import node_image.agent.cli"], check=True, env=env, timeout=120
    )
    return env


def agent_argv(*args: str) -> list[str]:
    exe = BIN / "corral-agent"
    if exe.exists():
        return [str(exe), *args]
    return [sys.executable, "-m", "node_image.agent.cli", *args]


@dataclass
class Measured:
    name: str
    pid: int
    rss0: int = 0
    rss1: int = 0
    hwm: int = 0
    cpu0: float = 0.0
    cpu1: float = 0.0

    def begin(self) -> None:
        self.rss0, self.cpu0 = rss_kib(self.pid), cpu_seconds(self.pid)

    def end(self) -> None:
        self.rss1, self.cpu1 = rss_kib(self.pid), cpu_seconds(self.pid)
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                self.hwm = int(line.split()[1])

    def rss_mb(self) -> float:
        return max(self.rss0, self.rss1) * 1024 / 1e6

    def cpu_pct(self, seconds: float) -> float:
        return (self.cpu1 - self.cpu0) / seconds * 100


def wait_in_sync(stack: Stack, device_id: str, timeout: float = 120) -> dict[str, object]:
    def in_sync() -> dict[str, object] | None:
        status, shown = stack.api("GET", f"/api/v1/devices/{device_id}")
        return dict(shown) if status == 200 and shown["in_sync"] and shown["online"] else None

    return wait_until(f"{device_id} in sync and online", in_sync, timeout, interval=0.5)


def device_id_of(state_dir: Path, timeout: float = 120) -> str:
    identity = state_dir / "identity.json"
    wait_until(f"an identity in {state_dir}", identity.exists, timeout, interval=0.2)
    time.sleep(0.1)
    return str(json.loads(identity.read_text())["device_id"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, help="idle window (default 60, quick 10)")
    parser.add_argument("--settle", type=float, default=10, help="seconds after converging")
    parser.add_argument("--quick", action="store_true", help="10 s window, not recorded")
    parser.add_argument("--profile", type=Path, help="py-spy the agents into DIR")
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument(
        "--bare-env", action="store_true", help="not the systemd unit's environment"
    )
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)
    seconds = args.seconds or (10.0 if args.quick else 60.0)
    unit_env = {} if args.bare_env else unit_environment()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)

    stack = Stack("embedded")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        stack.start()
        env = with_bytecode_cache(tree_env(**unit_env), stack.root / "pycache")
        token = stack.create_fleet_group(file_spec("idle\n"))
        seed = stack.root / "seed.json"
        seed.write_text(
            json.dumps({"server": stack.url, "token": token, "labels": {"bench": "fleet"}})
        )
        logs = stack.root / "agents.log"

        # Restarted: registered by `corral-agent register`, then `run` without a seed.
        restarted_state = stack.root / "restarted" / "state"
        subprocess.run(
            agent_argv("register", "--seed", str(seed), "--state-dir", str(restarted_state)),
            check=True,
            env=tree_env(),
            capture_output=True,
            timeout=120,
        )
        first_state = stack.root / "first-boot" / "state"
        with logs.open("ab") as out:
            for state, extra in (
                (restarted_state, []),
                (first_state, ["--seed", str(seed)]),
            ):
                procs.append(
                    subprocess.Popen(
                        agent_argv(
                            "run",
                            "--state-dir",
                            str(state),
                            "--simulated",
                            str(state.parent / "host"),
                            *extra,
                        ),
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        env=env,
                    )
                )
        ids = [device_id_of(restarted_state), device_id_of(first_state)]
        for device_id in ids:
            wait_in_sync(stack, device_id)
        log(f"agents {ids} converged and online; settling {args.settle:.0f}s")
        baseline = subprocess.Popen(
            [sys.executable, "-c", f"import time; time.sleep({seconds + args.settle + 30})"]
        )
        procs.append(baseline)
        time.sleep(args.settle)

        measured = [
            Measured("restarted", procs[0].pid),
            Measured("first boot", procs[1].pid),
            Measured("bare python", baseline.pid),
        ]
        spies = [
            start_py_spy(m.pid, args.profile / f"agent-{m.name.replace(' ', '-')}.txt")
            for m in measured[:2]
            if args.profile
        ]
        for m in measured:
            m.begin()
        started = time.monotonic()
        time.sleep(seconds)
        window = time.monotonic() - started
        for m in measured:
            m.end()
        for spy in spies:
            stop_py_spy(spy)
        for device_id in ids:  # still converged and online at the end of the window
            wait_in_sync(stack, device_id, timeout=5)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
        stack.close()

    restarted, first, bare = measured
    rss_ok = max(restarted.rss_mb(), first.rss_mb()) <= TARGET_RSS_MB
    cpu_ok = max(restarted.cpu_pct(window), first.cpu_pct(window)) <= TARGET_CPU_PCT
    rev = git_describe()
    ratio = restarted.rss_mb() / bare.rss_mb()
    ratio_first = first.rss_mb() / bare.rss_mb()
    line = (
        f"agent idle ({window:.0f}s, {rev}): restarted agent VmRSS {restarted.rss_mb():.1f} MB "
        f"(peak {restarted.hwm * 1024 / 1e6:.1f}), CPU {restarted.cpu_pct(window):.3f}% | "
        f"first-boot agent VmRSS {first.rss_mb():.1f} MB (peak {first.hwm * 1024 / 1e6:.1f}), "
        f"CPU {first.cpu_pct(window):.3f}% | baseline bare python VmRSS {bare.rss_mb():.1f} MB | "
        f"ratio {ratio:.2f}x (first boot {ratio_first:.2f}x) | env {unit_env or 'bare'} | "
        f"[RSS <= {TARGET_RSS_MB:.0f} MB: {verdict(rss_ok)}; CPU <= {TARGET_CPU_PCT}%: "
        f"{verdict(cpu_ok)}]"
    )
    print(line, flush=True)
    if args.profile:
        for m in measured[:2]:
            path = args.profile / f"agent-{m.name.replace(' ', '-')}.txt"
            if path.exists():
                tops = ", ".join(f"{p:.0f}% {f}" for f, p in top_functions(path, 8))
                log(f"py-spy {m.name}: {tops}")
    if args.quick or args.no_record or args.profile:
        log("not recorded (quick, --no-record or --profile)")
        return 0
    append_row(
        [
            today(),
            f"agent idle, 1 `corral-agent run` process, {window:.0f} s (bench/agent_idle.py)",
            f"VmRSS {restarted.rss_mb():.1f} MB, CPU {restarted.cpu_pct(window):.3f}% "
            f"(first boot, registered in-process: {first.rss_mb():.1f} MB, "
            f"{first.cpu_pct(window):.3f}%)",
            f"bare `python -c 'import time; time.sleep()'` VmRSS {bare.rss_mb():.1f} MB",
            f"{ratio:.2f}x (first boot {ratio_first:.2f}x)",
            f"RSS <= {TARGET_RSS_MB:.0f} MB: {verdict(rss_ok)}; CPU <= {TARGET_CPU_PCT}%: "
            f"{verdict(cpu_ok)}",
            f"peak VmHWM {restarted.hwm * 1024 / 1e6:.1f} / {first.hwm * 1024 / 1e6:.1f} MB; "
            f"embedded broker, MQTT connected, converged; bytecode cached; agent environment "
            f"{' '.join(f'{k}={v}' for k, v in unit_env.items()) or 'bare'}; {rev}"
            + (f"; {args.note}" if args.note else ""),
        ]
    )
    log("appended a row to BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
