"""Shared helpers of the fleet benches (``reconnect_storm.py``, ``fanout.py``, ``agent_idle.py``).

- :class:`Stack`: ``corral serve`` in its own process on 127.0.0.1 with the embedded broker, or
  with Mosquitto 2 (``corral broker mosquitto-config`` + ``mosquitto -c``) and
  ``serve --mqtt-url``; start, SIGTERM, restart either; RSS from ``/proc``; the operator API;
  the server's SQLite read-only (how many devices the server shows converged).
- :class:`Fleet`: N real agents (``node_image.agent.daemon.Agent`` on ``SimulatedHost``) in
  this process's event loop, registered with the agent's own registration code.
- Floors, from one asyncio process with the cheapest client that still does the real work:
  N TLS connects + ``GET /healthz`` to the HTTPS server, N TLS connects + MQTT CONNECT and
  SUBSCRIBE to the broker (raw MQTT 3.1.1 over asyncio TLS streams, no client library), and
  N MQTT publish/receive exchanges over connections already open.
- The BENCHMARKS.md row (appended with O_APPEND, never rewritten: other benches append too).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if sys.path[0] != str(ROOT):
    # The real ``registration`` package, not bench/registration.py, which shares its name.
    sys.path.insert(0, str(ROOT))

import asyncio  # noqa: E402
import contextlib  # noqa: E402
import datetime as dt  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import multiprocessing as mp  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sqlite3  # noqa: E402
import ssl  # noqa: E402
import statistics  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402
from collections.abc import Awaitable, Callable, Sequence  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from multiprocessing.connection import Connection  # noqa: E402
from typing import Any  # noqa: E402

BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
BIN = Path(sys.executable).parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
HOST = "127.0.0.1"
GROUP = "fleet"
SELECTOR = "bench=fleet"
LABELS = {"bench": "fleet"}
FILE_PATH = "/etc/bench/generation"
NOFILE = 250_000


# --------------------------------------------------------------------------- small things


def log(message: str) -> None:
    """Progress goes to stderr; stdout carries only the result line."""
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def raise_nofile(want: int = NOFILE) -> int:
    """Raise RLIMIT_NOFILE (soft, and hard when allowed: root may) for this process and the
    children it starts. Returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for limits in ((want, max(hard, want)), (max(soft, hard), hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _child_limits() -> None:  # preexec_fn of every process started here
    raise_nofile()


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


def cpu_seconds(pid: int) -> float:
    """utime + stime of a whole process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_ticks() -> tuple[int, int]:
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(values[:8])
    return total - values[3] - values[4], total


def git_describe() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "edge_server", "registration", "node_image"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return (rev or "unknown") + ("+dirty" if dirty else "")


def today() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


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
        self.busy0 = machine_busy_ticks()[0]
        self.mine0 = self._mine()
        return self

    def stop(self) -> tuple[float, float, float]:
        """(machine busy, ours, other) in cores since :meth:`start`."""
        seconds = max(1e-6, time.monotonic() - self.t0)
        busy = (machine_busy_ticks()[0] - self.busy0) / CLK_TCK / seconds
        self.cores = {
            pid: (v - self.mine0.get(pid, 0.0)) / seconds for pid, v in self._mine().items()
        }
        mine = sum(self.cores.values())
        return busy, mine, max(0.0, busy - mine)


def wait_quiet(pids: Callable[[], Sequence[int]], max_wait: float, threshold: float = 0.2) -> float:
    """Wait up to ``max_wait`` s for a second in which work other than ours uses less than
    ``threshold`` cores. Returns the other cores seen last."""
    deadline = time.monotonic() + max_wait
    while True:
        window = CpuWindow(pids).start()
        time.sleep(1.0)
        other = window.stop()[2]
        if other < threshold or time.monotonic() >= deadline:
            return other


BENCHMARKS_HEADER = """\
# Benchmarks

Measured figures of the real server, one row per full run, newest last. Compare ratios (each
against a baseline measured in the same run), not absolute figures across machines.

| date | benchmark | figure | baseline | ratio | target | notes |
| --- | --- | --- | --- | --- | --- | --- |
"""


def append_row(cells: Sequence[str], path: Path = BENCHMARKS_MD) -> None:
    """Append one table row. O_APPEND, never a rewrite: other benches append concurrently."""
    row = "| " + " | ".join(c.replace("|", "/").replace("\n", " ") for c in cells) + " |\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if os.fstat(fd).st_size == 0:
            os.write(fd, BENCHMARKS_HEADER.encode())
        else:
            with path.open("rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    os.write(fd, b"\n")
        os.write(fd, row.encode())
    finally:
        os.close(fd)


def start_py_spy(pid: int, out: Path, threads: bool = False) -> subprocess.Popen[bytes]:
    """Record ``pid`` with py-spy until :func:`stop_py_spy`: ``.txt`` = collapsed stacks
    (``--format raw``), else a flame graph. Sampled without pausing the process; it takes
    py-spy about half a second to attach."""
    exe = BIN / "py-spy"
    cmd = [str(exe), "record", "--pid", str(pid), "--rate", "100", "--output", str(out)]
    cmd += ["--format", "raw" if out.suffix == ".txt" else "flamegraph", "--nonblocking"]
    if threads:
        cmd.append("--threads")
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_py_spy(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None:
        return
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def top_functions(
    collapsed: Path, n: int = 12, own: bool = True, by_function: bool = False
) -> list[tuple[str, float]]:
    """From py-spy's collapsed stacks: the functions with the largest share of samples, by
    self time (``own``) or inclusive time; ``by_function`` merges a function's lines."""
    totals: dict[str, int] = {}
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        frames = stack.split(";")
        if by_function:
            frames = [
                f.split(" (", 1)[0] + " (" + f.split(" (", 1)[-1].split(":")[0] + ")"
                if " (" in f
                else f
                for f in frames
            ]
        if own:
            totals[frames[-1]] = totals.get(frames[-1], 0) + count
        else:
            for frame in set(frames):
                totals[frame] = totals.get(frame, 0) + count
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])[:n]
    return [(name, count / samples * 100 if samples else 0.0) for name, count in ranked]


# --------------------------------------------------------------------------- the stack


@dataclass
class Stack:
    """``corral serve`` (+ Mosquitto) on 127.0.0.1 free ports, data in a throw-away dir."""

    broker: str = "embedded"  # or "mosquitto"
    env: dict[str, str] = field(default_factory=dict)
    root: Path = field(init=False)
    port: int = field(init=False)
    mqtt_port: int = field(init=False)
    server: subprocess.Popen[bytes] | None = field(init=False, default=None)
    mosquitto: subprocess.Popen[bytes] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.broker not in ("embedded", "mosquitto"):
            raise ValueError(f"broker must be embedded or mosquitto, not {self.broker!r}")
        self.root = Path(tempfile.mkdtemp(prefix="corral-fleet-"))
        self.port = free_port()
        self.mqtt_port = free_port()

    # --- paths and names

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        return f"https://{HOST}:{self.port}"

    @property
    def mqtt_url(self) -> str:
        return f"mqtts://{HOST}:{self.mqtt_port}"

    @property
    def ca(self) -> Path:
        return self.data / "pki" / "ca.pem"

    @property
    def db_path(self) -> Path:
        return self.data / "corral.db"

    @property
    def mosquitto_dir(self) -> Path:
        return self.root / "mosquitto"

    @property
    def admin_token(self) -> str:
        return (self.data / "admin-token").read_text().strip()

    def _env(self) -> dict[str, str]:
        env = {**os.environ, **self.env}
        env.pop("CORRAL_GUARD_BLOCKING", None)  # the test-only guard slows every call
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        return env

    def corral(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "edge_server.cli.main", "--data-dir", str(self.data), *args],
            capture_output=True,
            text=True,
            env=self._env(),
            cwd=self.root,
            timeout=300,
        )
        if result.returncode != 0:
            raise RuntimeError(f"corral {' '.join(args)}: {result.stderr}")
        return result.stdout

    # --- processes

    def start(self) -> None:
        if self.broker == "mosquitto":
            self.corral(
                "broker",
                "mosquitto-config",
                "--out",
                str(self.mosquitto_dir),
                "--listen",
                f"{HOST}:{self.mqtt_port}",
                "--run-as",
                "root",
            )
            self.start_mosquitto()
        self.start_server()

    def start_mosquitto(self, timeout: float = 20) -> float:
        started = time.monotonic()
        with (self.root / "mosquitto.log").open("ab") as out:
            self.mosquitto = subprocess.Popen(
                ["mosquitto", "-c", str(self.mosquitto_dir / "mosquitto.conf")],
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_child_limits,  # noqa: PLW1509 - no threads run Popen here
            )
        proc = self.mosquitto
        _wait_tcp(self.mqtt_port, lambda: proc.poll() is None, timeout, self.mosquitto_log)
        return time.monotonic() - started

    def stop_mosquitto(self) -> float:
        started = time.monotonic()
        proc, self.mosquitto = self.mosquitto, None
        _terminate(proc, 60)
        return time.monotonic() - started

    def launch_server(self) -> subprocess.Popen[bytes]:
        """Start ``corral serve``; returns at once (see :meth:`wait_listening`)."""
        argv = [
            sys.executable,
            "-m",
            "edge_server.cli.main",
            "--data-dir",
            str(self.data),
            "serve",
            "--listen",
            f"{HOST}:{self.port}",
            "--mqtt-listen",
            f"{HOST}:{self.mqtt_port}",
        ]
        if self.broker == "mosquitto":
            argv += ["--mqtt-url", self.mqtt_url]
        with (self.root / "server.log").open("ab") as out:
            self.server = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self._env(),
                cwd=self.root,
                preexec_fn=_child_limits,  # noqa: PLW1509
            )
        return self.server

    def wait_listening(self, timeout: float = 60) -> None:
        proc = self.server
        assert proc is not None
        _wait_tcp(self.port, lambda: proc.poll() is None, timeout, self.server_log)

    def start_server(self, timeout: float = 60) -> float:
        """Start the server and wait until its channel is connected to the broker."""
        started = time.monotonic()
        self.launch_server()
        self.wait_listening(timeout)
        self.wait_channel(timeout)
        return time.monotonic() - started

    def wait_channel(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                status, stats = self.api("GET", "/api/v1/stats")
                if status == 200 and stats["channel"]["connected"]:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"the server's MQTT channel did not connect:\n{self.server_log()}")

    def stop_server(self) -> float:
        """SIGTERM and wait; returns the seconds the shutdown took."""
        started = time.monotonic()
        proc, self.server = self.server, None
        _terminate(proc, 60)
        return time.monotonic() - started

    def close(self) -> None:
        self.stop_server()
        self.stop_mosquitto()
        problems = self.server_log().count("Traceback")
        if problems:
            log(f"server log has {problems} traceback(s); tail:\n{self.server_log()[-3000:]}")
        if os.environ.get("FLEET_KEEP"):
            log(f"kept {self.root} (FLEET_KEEP)")
        else:
            shutil.rmtree(self.root, ignore_errors=True)

    def server_log(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def mosquitto_log(self) -> str:
        path = self.root / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def pids(self) -> list[int]:
        return [p.pid for p in (self.server, self.mosquitto) if p is not None]

    def server_rss(self) -> int:
        assert self.server is not None
        return rss_kib(self.server.pid)

    def broker_rss(self) -> int | None:
        return rss_kib(self.mosquitto.pid) if self.mosquitto is not None else None

    # --- the API

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {self.admin_token}",
        }
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data, headers, method=method)  # noqa: S310
        context = ssl.create_default_context(cafile=str(self.ca))
        try:
            with urllib.request.urlopen(request, context=context, timeout=600) as response:  # noqa: S310
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def checked(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = self.api(method, path, body)
        if status not in (200, 201):
            raise RuntimeError(f"{method} {path}: {status} {answer}")
        return answer

    def create_fleet_group(self, spec: dict[str, Any]) -> str:
        """The bench group and a reusable token whose devices it selects; returns the token."""
        self.checked("POST", "/api/v1/groups", {"name": GROUP, "selector": SELECTOR, "spec": spec})
        token = self.checked(
            "POST",
            "/api/v1/tokens",
            {"group": GROUP, "labels": LABELS, "max_uses": None, "ttl_seconds": 24 * 3600},
        )
        return str(token["token"])

    def set_group_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        """PATCH the group's spec (what ``corral group set`` does); the server answers after
        recomputing every spec and publishing every nudge."""
        answer: dict[str, Any] = self.checked("PATCH", f"/api/v1/groups/{GROUP}", {"spec": spec})
        return answer

    def devices(self) -> list[dict[str, Any]]:
        """Every device as ``corral device list -o json`` shows it."""
        items: list[dict[str, Any]] = []
        after = ""
        while True:
            page = self.checked("GET", f"/api/v1/devices?limit=1000{after}")
            items += page["items"]
            if not page["next"]:
                return items
            after = f"&after={page['next']}"

    def offline_group_spec(self, spec: dict[str, Any]) -> int:
        """Change the group's spec while the server is stopped, with the server's own code
        and in one transaction, as the API's PATCH does: the group row, then every device's
        spec recomputed and its generation bumped. Returns the devices changed."""
        assert self.server is None, "stop the server first"
        from edge_server import specs
        from edge_server.store import connect
        from edge_server.store import groups as groups_store
        from registration.desired import SpecPatch

        patch = SpecPatch.model_validate(spec).model_dump(exclude_none=True)
        db = connect(self.db_path)
        try:
            db.conn.execute("BEGIN IMMEDIATE")
            if not groups_store.update(db, GROUP, spec=patch):
                raise RuntimeError(f"no group {GROUP}")
            changes = specs.recompute(db)
            db.conn.execute("COMMIT")
        finally:
            db.conn.close()
        return len(changes)

    # --- what the server shows, read-only from its database (costs the server nothing)

    def converged(self, generation: int) -> int:
        """Devices whose observed generation the server has recorded as ``generation``."""
        conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30)
        try:
            row = conn.execute(
                "SELECT count(*) FROM device_state WHERE observed_generation >= ?", (generation,)
            ).fetchone()
            return int(row[0])
        finally:
            conn.close()


def _wait_tcp(port: int, alive: Callable[[], bool], timeout: float, why: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"process exited before listening on {port}:\n{why()[-3000:]}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {HOST}:{port} after {timeout}s:\n{why()[-3000:]}")


def _terminate(proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        log(f"pid {proc.pid} did not stop in {timeout}s: killed")
        proc.kill()
        proc.wait()


def file_spec(content: str) -> dict[str, Any]:
    return {"config": [{"path": FILE_PATH, "mode": 0o644, "content": content}]}


@dataclass
class Convergence:
    """When the server's database showed how many devices at a generation (monotonic)."""

    started: float
    series: list[tuple[float, int]] = field(default_factory=list)

    @property
    def done(self) -> float:
        return self.series[-1][0]

    def at_share(self, share: float) -> float:
        """Seconds from ``started`` until ``share`` of the devices were shown (by the poll)."""
        n = self.series[-1][1]
        for t, count in self.series:
            if count >= share * n:
                return t - self.started
        return float("nan")

    def shape(self) -> str:
        return (
            "server shows 1%/10%/50%/90%/100% at "
            + "/".join(f"{self.at_share(q):.2f}" for q in (0.01, 0.1, 0.5, 0.9, 1.0))
            + " s"
        )


async def wait_converged(
    stack: Stack,
    generation: int,
    n: int,
    within: float,
    interval: float = 0.05,
    started: float | None = None,
) -> Convergence:
    """Poll the server's database until ``n`` devices show ``generation``. Raises
    TimeoutError with the count reached."""
    progress = Convergence(time.monotonic() if started is None else started)
    deadline = time.monotonic() + within
    last_report = time.monotonic()
    while True:
        seen = await asyncio.to_thread(stack.converged, generation)
        now = time.monotonic()
        progress.series.append((now, seen))
        if seen >= n:
            return progress
        if now > deadline:
            raise TimeoutError(f"{seen}/{n} devices at generation {generation} after {within}s")
        if now - last_report > 10:
            log(f"  {seen}/{n} at generation {generation}")
            last_report = now
        await asyncio.sleep(interval)


# --------------------------------------------------------------------------- the fleet


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
        return [int(p.pid) for p in self._workers]

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


# --------------------------------------------------------------------------- floors

# Raw MQTT 3.1.1, just what the floors need.


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _mqtt_string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def mqtt_connect_packet(client_id: str, keepalive: int = 60) -> bytes:
    body = _mqtt_string("MQTT") + bytes([4, 0x02]) + struct.pack("!H", keepalive)
    body += _mqtt_string(client_id)
    return b"\x10" + _remaining_length(len(body)) + body


def mqtt_subscribe_packet(packet_id: int, topic: str, qos: int = 1) -> bytes:
    body = struct.pack("!H", packet_id) + _mqtt_string(topic) + bytes([qos])
    return b"\x82" + _remaining_length(len(body)) + body


def mqtt_publish_packet(
    topic: str, payload: bytes, packet_id: int, qos: int = 1, retain: bool = False
) -> bytes:
    body = _mqtt_string(topic) + (struct.pack("!H", packet_id) if qos else b"") + payload
    flags = 0x30 | (qos << 1) | (1 if retain else 0)
    return bytes([flags]) + _remaining_length(len(body)) + body


def mqtt_puback_packet(packet_id: int) -> bytes:
    return b"\x40\x02" + struct.pack("!H", packet_id)


MQTT_DISCONNECT = b"\xe0\x00"


async def read_mqtt_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """(first byte, body) of the next packet."""
    head = await reader.readexactly(1)
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return head[0], await reader.readexactly(length) if length else b""


def device_tls(files: DeviceFiles) -> ssl.SSLContext:
    """The device's own TLS context, as the agent builds it (CA pinned, client cert)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(files.ca))
    ctx.load_cert_chain(str(files.cert), str(files.key))
    return ctx


@dataclass
class FloorResult:
    what: str
    n: int
    seconds: float
    errors: int
    error_sample: str = ""

    @property
    def rate(self) -> float:
        return self.n / self.seconds if self.seconds else float("nan")

    def summary(self) -> str:
        errors = f", {self.errors} errors ({self.error_sample})" if self.errors else ""
        return f"{self.what}: {self.n} in {self.seconds:.2f}s = {self.rate:.0f}/s{errors}"


async def _bounded(
    n: int, concurrency: int, one: Callable[[int], Awaitable[None]]
) -> tuple[float, int, str]:
    slots = asyncio.Semaphore(concurrency)
    errors = 0
    sample = ""

    async def run(i: int) -> None:
        nonlocal errors, sample
        async with slots:
            try:
                await one(i)
            except (OSError, ssl.SSLError, asyncio.IncompleteReadError, TimeoutError) as e:
                errors += 1
                sample = sample or repr(e)[:200]

    started = time.monotonic()
    await asyncio.gather(*(run(i) for i in range(n)))
    return time.monotonic() - started, errors, sample


def _contexts(files: Sequence[DeviceFiles]) -> list[ssl.SSLContext]:
    # One context per device, as each agent has (built before timing).
    return [device_tls(f) for f in files]


async def https_connect_floor(
    port: int, files: Sequence[DeviceFiles], concurrency: int = 256
) -> FloorResult:
    """N fresh TLS connections (client certificate presented) + ``GET /healthz``, close."""
    contexts = await asyncio.to_thread(_contexts, files)
    request = f"GET /healthz HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n"

    async def one(i: int) -> None:
        async with asyncio.timeout(60):
            reader, writer = await asyncio.open_connection(
                HOST, port, ssl=contexts[i], server_hostname=HOST
            )
            try:
                writer.write(request.encode())
                head = await reader.readuntil(b"\r\n\r\n")
                if head[9:12] != b"200":
                    raise OSError(f"healthz answered {head[:12]!r}")
                await reader.read()
            finally:
                writer.close()
                with contextlib.suppress(OSError, ssl.SSLError):
                    await writer.wait_closed()

    seconds, errors, sample = await _bounded(len(files), concurrency, one)
    return FloorResult("HTTPS TLS connect + GET /healthz", len(files), seconds, errors, sample)


@dataclass
class MqttConn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    device_id: str


async def mqtt_connect_floor(
    port: int,
    files: Sequence[DeviceFiles],
    concurrency: int = 256,
    keep: bool = False,
    subscribe: bool = True,
) -> tuple[FloorResult, list[MqttConn]]:
    """N TLS connections to the broker with the devices' certificates, each MQTT CONNECT
    (client id = device id, clean session) → CONNACK, SUBSCRIBE its nudge topic → SUBACK;
    all held open until the last is up. With ``keep`` the connections are returned open."""
    from registration.desired import nudge_topic

    contexts = await asyncio.to_thread(_contexts, files)
    conns: list[MqttConn | None] = [None] * len(files)

    async def one(i: int) -> None:
        device_id = files[i].device_id
        async with asyncio.timeout(60):
            reader, writer = await asyncio.open_connection(
                HOST, port, ssl=contexts[i], server_hostname=HOST
            )
            writer.write(mqtt_connect_packet(device_id))
            kind, body = await read_mqtt_packet(reader)
            if kind >> 4 != 2 or body[1:2] != b"\x00":
                writer.close()
                raise OSError(f"CONNACK {kind:#x} {body!r}")
            if subscribe:
                writer.write(mqtt_subscribe_packet(1, nudge_topic(device_id)))
            while subscribe:  # a retained nudge may come before or after the SUBACK
                kind, body = await read_mqtt_packet(reader)
                if kind >> 4 == 3:  # PUBLISH (retained nudge)
                    if kind & 0x06:
                        topic_len = struct.unpack("!H", body[:2])[0]
                        writer.write(
                            mqtt_puback_packet(
                                *struct.unpack("!H", body[2 + topic_len : 4 + topic_len])
                            )
                        )
                    continue
                if kind >> 4 == 9:
                    if body[2:3] == b"\x80":
                        raise OSError("SUBACK refused")
                    break
            conns[i] = MqttConn(reader, writer, device_id)

    seconds, errors, sample = await _bounded(len(files), concurrency, one)
    what = "MQTT TLS connect + CONNECT" + (" + SUBSCRIBE" if subscribe else "")
    result = FloorResult(what, len(files), seconds, errors, sample)
    opened = [c for c in conns if c is not None]
    if not keep:
        await close_mqtt(opened)
        opened = []
    return result, opened


async def close_mqtt(conns: Sequence[MqttConn]) -> None:
    for c in conns:
        with contextlib.suppress(OSError, RuntimeError):
            c.writer.write(MQTT_DISCONNECT)
            c.writer.close()
    for c in conns:
        with contextlib.suppress(OSError, ssl.SSLError, RuntimeError):
            await c.writer.wait_closed()


async def mqtt_exchange_floor(conns: Sequence[MqttConn]) -> FloorResult:
    """Over connections already open (not timed, and not yet subscribed): each device
    subscribes to its nudge topic and gets the retained nudge the server published for it (a
    delivery from the broker), and publishes its presence, QoS 1 and retained as the agent
    does (a publish to the broker, which passes it on to the server's channel). Timed until
    every device has both."""
    from registration.desired import Presence, nudge_topic, presence_topic

    payload = Presence(online=True).model_dump_json().encode()

    async def one(i: int) -> None:
        c = conns[i]
        async with asyncio.timeout(120):
            c.writer.write(mqtt_subscribe_packet(2, nudge_topic(c.device_id)))
            c.writer.write(
                mqtt_publish_packet(presence_topic(c.device_id), payload, 3, retain=True)
            )
            got_nudge = got_suback = got_puback = False
            while not (got_nudge and got_suback and got_puback):
                kind, body = await read_mqtt_packet(c.reader)
                if kind >> 4 == 3:
                    got_nudge = True
                    if kind & 0x06:
                        topic_len = struct.unpack("!H", body[:2])[0]
                        c.writer.write(
                            mqtt_puback_packet(
                                *struct.unpack("!H", body[2 + topic_len : 4 + topic_len])
                            )
                        )
                elif kind >> 4 == 9:
                    got_suback = True
                elif kind >> 4 == 4:
                    got_puback = True

    seconds, errors, sample = await _bounded(len(conns), len(conns) or 1, one)
    return FloorResult(
        "MQTT exchange (retained nudge in + presence out, QoS 1)",
        len(conns),
        seconds,
        errors,
        sample,
    )
