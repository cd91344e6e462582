"""What ``/proc`` says about our processes and the machine: CPU, memory, sockets, file limits;
CPU accounted over a window, and waiting for the machine to be quiet before measuring."""

from __future__ import annotations

import contextlib
import os
import resource
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
NOFILE = 250_000


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a whole process (all its threads), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_cpu_ticks() -> tuple[int, int, int]:
    """(busy, total, steal) ticks of all CPUs since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    steal = values[7] if len(values) > 7 else 0
    total = sum(values[:8])
    return total - idle - steal, total, steal


def rss_kib(pid: int) -> int:
    """VmRSS of a process, KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def open_sockets(pid: int) -> int:
    """How many sockets a process holds open."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            if os.readlink(fd).startswith("socket:"):
                count += 1
    return count


def raise_nofile(want: int = NOFILE) -> int:
    """Raise RLIMIT_NOFILE (soft, and hard when allowed: root may) for this process and the
    children it starts from now on. Returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for limits in ((want, max(hard, want)), (max(soft, hard), hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass
class CpuWindow:
    """CPU over a window: the machine's, ours (``pids()``: server, broker, agents, this
    process) and the rest (other work on this shared machine), in cores."""

    pids: Callable[[], Sequence[int]]
    t0: float = 0.0
    busy0: int = 0
    mine0: dict[int, float] = field(default_factory=dict)
    #: After :meth:`stop`: cores each of our processes used in the window.
    cores: dict[int, float] = field(default_factory=dict)

    def _mine(self) -> dict[int, float]:
        out: dict[int, float] = {}
        for pid in {*self.pids(), os.getpid()}:
            with contextlib.suppress(OSError, ValueError):
                out[pid] = cpu_seconds(pid)
        return out

    def start(self) -> CpuWindow:
        self.t0 = time.monotonic()
        self.busy0 = machine_cpu_ticks()[0]
        self.mine0 = self._mine()
        return self

    def stop(self) -> tuple[float, float, float]:
        """(machine busy, ours, other) in cores since :meth:`start`."""
        seconds = max(1e-6, time.monotonic() - self.t0)
        busy = (machine_cpu_ticks()[0] - self.busy0) / CLK_TCK / seconds
        self.cores = {
            pid: (v - self.mine0.get(pid, 0.0)) / seconds for pid, v in self._mine().items()
        }
        mine = sum(self.cores.values())
        return busy, mine, max(0.0, busy - mine)

    def by_name(self, names: dict[int, str], default: str = "bench") -> dict[str, float]:
        """After :meth:`stop`: cores per role (``names``: pid -> role)."""
        parts: dict[str, float] = {}
        for pid, cores in self.cores.items():
            name = names.get(pid, default)
            parts[name] = parts.get(name, 0.0) + cores
        return parts


def wait_quiet(
    pids: Callable[[], Sequence[int]], max_wait: float, threshold: float = 0.2, window: float = 1.0
) -> float:
    """Wait up to ``max_wait`` s for a ``window`` in which work other than ours (``pids()``
    and this process) uses less than ``threshold`` cores, so another job's load does not end
    up in the figures. Returns the other cores seen last."""
    deadline = time.monotonic() + max_wait
    while True:
        cpu = CpuWindow(pids).start()
        time.sleep(window)
        other = cpu.stop()[2]
        if other < threshold or time.monotonic() >= deadline:
            return other


@dataclass
class CpuSample:
    t: float
    server: float
    clients: float
    busy: int
    total: int
    steal: int


class CpuSampler:
    """Samples CPU use of the server, the load generator and the machine every ``interval``,
    so a phase's steady-state window (known only afterwards) can be accounted exactly."""

    def __init__(self, server_pid: int, client_pids: Sequence[int], interval: float = 0.05):
        self.server_pid = server_pid
        self.client_pids = list(client_pids)
        self.interval = interval
        self.samples: list[CpuSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def _sample(self) -> CpuSample:
        busy, total, steal = machine_cpu_ticks()
        return CpuSample(
            time.monotonic(),
            cpu_seconds(self.server_pid),
            sum(cpu_seconds(p) for p in self.client_pids),
            busy,
            total,
            steal,
        )

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self._sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(self._sample())

    def at(self, t: float) -> CpuSample:
        """Linear interpolation between the samples around ``t``."""
        s = self.samples
        if t <= s[0].t:
            return s[0]
        for a, b in zip(s, s[1:], strict=False):
            if a.t <= t <= b.t:
                f = (t - a.t) / (b.t - a.t) if b.t > a.t else 0.0
                return CpuSample(
                    t,
                    _lerp(a.server, b.server, f),
                    _lerp(a.clients, b.clients, f),
                    round(_lerp(a.busy, b.busy, f)),
                    round(_lerp(a.total, b.total, f)),
                    round(_lerp(a.steal, b.steal, f)),
                )
        return s[-1]


def _lerp(x: float, y: float, f: float) -> float:
    return x + (y - x) * f
