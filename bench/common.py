"""Shared bench helpers: the real server in a subprocess, a multi-process HTTPS load generator,
CPU accounting from /proc, and the BENCHMARKS.md log.

The load generator speaks HTTP/1.1 over ``asyncio`` TLS streams itself instead of using an HTTP
client library: every bench runs the generator on the same cores as the server, so each
microsecond the generator spends is a microsecond the server does not get. Requests are built
as bytes before timing starts and responses are parsed only as far as status, length and
``Connection``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import gc
import json
import multiprocessing as mp
import os
import resource
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
CLK_TCK = os.sysconf("SC_CLK_TCK")

Mode = Literal["fresh", "keepalive"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log(message: str) -> None:
    """Progress goes to stderr; stdout carries only the result line."""
    sys.stderr.write(f"[bench] {message}\n")
    sys.stderr.flush()


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of a whole process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_cpu_ticks() -> tuple[int, int, int]:
    """(busy, total, steal) ticks of all CPUs since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    steal = values[7] if len(values) > 7 else 0
    total = sum(values[:8])
    return total - idle - steal, total, steal


def git_describe() -> str:
    """Short commit of the tree under test, ``+dirty`` when server code has local edits."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "edge_server", "registration"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


# --------------------------------------------------------------------------- the server


@dataclass
class ServerProcess:
    """``corral serve`` on 127.0.0.1, a free port and a throw-away data directory."""

    env: dict[str, str] = field(default_factory=dict)
    data_dir: Path = field(init=False)
    port: int = field(init=False)
    proc: subprocess.Popen[bytes] | None = field(init=False, default=None)
    _tmp: tempfile.TemporaryDirectory[str] | None = field(init=False, default=None)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_path(self) -> Path:
        return self.data_dir / "pki" / "ca.pem"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / "server.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def admin_token(self) -> str:
        return (self.data_dir / "admin-token").read_text().strip()

    def start(self, timeout: float = 30) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="corral-bench-")
        self.data_dir = Path(self._tmp.name) / "data"
        self.port = free_port()
        env = {**os.environ, **self.env}
        env.pop("CORRAL_GUARD_BLOCKING", None)  # the test-only guard would slow every call
        # The embedded MQTT broker gets a free port too, so two servers never collide.
        env.setdefault("CORRAL_MQTT_LISTEN", f"127.0.0.1:{free_port()}")
        # Serve the code of the tree this bench lives in, even from a copy or worktree whose
        # packages are not the ones installed in the venv.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "edge_server.cli.main",
                    "--data-dir",
                    str(self.data_dir),
                    "serve",
                    "--listen",
                    f"127.0.0.1:{self.port}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self._tmp.name,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited at start:\n{self.log()}")
            if self.ca_path.exists():
                try:
                    if self.request("GET", "/healthz", token=None)[0] == 200:
                        return
                except (OSError, ssl.SSLError):
                    pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not come up in {timeout}s:\n{self.log()}")

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_path))

    def request(
        self, method: str, path: str, body: Any = None, token: str | None = ""
    ) -> tuple[int, Any]:
        """One verified HTTPS call (setup and checks, never timed). ``token=""`` = admin."""
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token or self.admin_token}"
        data = None if body is None else json.dumps(body).encode()
        url = self.url + path  # always https://127.0.0.1:<port>/...
        req = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310
        try:
            with urllib.request.urlopen(req, context=self.ssl_context(), timeout=30) as resp:  # noqa: S310
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> int | None:
        code = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(20)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            code = self.proc.returncode
            self.proc = None
        return code

    def cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


@contextlib.contextmanager
def running_server(env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    server = ServerProcess(env=env or {})
    try:
        server.start()
        yield server
    finally:
        server.stop()
        problems = [line for line in server.log().splitlines() if "Traceback" in line]
        if problems:
            log(f"server log has {len(problems)} traceback(s):\n{server.log()[-3000:]}")
        server.cleanup()


# --------------------------------------------------------------------------- CPU sampling


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
            process_cpu_seconds(self.server_pid),
            sum(process_cpu_seconds(p) for p in self.client_pids),
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


def wait_for_quiet(max_wait: float, threshold: float = 0.15, window: float = 0.5) -> float:
    """Wait (up to ``max_wait`` s) for a ``window`` in which the machine uses less than
    ``threshold`` cores, so another job's load does not end up in the figures. Returns the
    cores busy in the last window looked at."""
    deadline = time.monotonic() + max_wait
    while True:
        a = machine_cpu_ticks()[0]
        time.sleep(window)
        busy = (machine_cpu_ticks()[0] - a) / CLK_TCK / window
        if busy < threshold or time.monotonic() >= deadline:
            return busy


# --------------------------------------------------------------------------- load generator


@dataclass(frozen=True)
class PhaseSpec:
    name: str
    mode: Mode
    requests: list[bytes]  # complete HTTP/1.1 requests, sent as-is
    concurrency: int  # in flight across all load processes
    expect_status: int
    warmup: int  # first completions left out of the figures


@dataclass
class PhaseResult:
    name: str
    mode: Mode
    concurrency: int
    requests: int
    measured: int
    errors: int
    error_sample: str
    seconds: float
    rate: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    latencies: list[float] = field(repr=False)  # seconds, sorted, of the measured requests
    server_cpu: float  # cores used by the server process in the window (1.0 = one core)
    client_cpu: float  # cores used by the load processes (and this process) in the window
    other_cpu: float  # cores used by anything else (other work on the machine, softirqs)
    machine_busy: float  # share of all CPUs busy in the window (0..1)
    steal: float  # share of all CPU time stolen by the hypervisor
    context: str = ""  # what the bench wants said with the figures (e.g. database size)

    @property
    def server_ms_per_req(self) -> float:
        return self.server_cpu / self.rate * 1000 if self.rate else float("nan")

    @property
    def client_ms_per_req(self) -> float:
        return self.client_cpu / self.rate * 1000 if self.rate else float("nan")

    def summary(self) -> str:
        return (
            f"{self.name}: {self.rate:.0f}/s p50 {self.p50_ms:.1f} ms p99 {self.p99_ms:.1f} ms "
            f"(max {self.max_ms:.0f}), {self.measured} measured in {self.seconds:.2f}s, "
            f"errors {self.errors}; CPU server {self.server_cpu * 100:.0f}% "
            f"({self.server_ms_per_req:.2f} ms/req) load-gen {self.client_cpu * 100:.0f}% "
            f"({self.client_ms_per_req:.2f} ms/req) other {self.other_cpu * 100:.0f}%, "
            f"machine {self.machine_busy * 100:.0f}% busy"
            + (f", steal {self.steal * 100:.0f}%" if self.steal > 0.005 else "")
            + (f"; {self.context}" if self.context else "")
        )


def build_request(
    method: str, path: str, host: str, body: bytes = b"", keepalive: bool = False
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    if body:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    if not keepalive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool, bytes]:
    """(status, server will close, body). Only what the generator needs of HTTP/1.1."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length: int | None = None
    close = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            close = True
    if length is None:
        return status, True, await reader.read()
    return status, close, await reader.readexactly(length)


Record = tuple[float, float, int]  # start, end (CLOCK_MONOTONIC, shared by all processes), status


def _client_context() -> ssl.SSLContext:
    # The generator does not verify the server's chain: the server's work per handshake is the
    # same either way, and on a shared 2-core box every verify the generator skips (an ECDSA
    # P-256 verify plus OpenSSL 3's chain building) is CPU the server gets back. No session is
    # ever offered for resumption, so every fresh connection is a full handshake, like a new
    # device's.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def _drive(
    spec: PhaseSpec, host: str, port: int, counter: Synchronized[int]
) -> tuple[list[Record], str]:
    ctx = _client_context()
    records: list[Record] = []
    writers: list[asyncio.StreamWriter] = []
    errors: list[str] = []
    total = len(spec.requests)
    monotonic = time.monotonic

    def take() -> int:
        with counter.get_lock():
            i = counter.value
            counter.value = i + 1
        return i

    def failed(e: BaseException) -> int:
        if len(errors) < 3:
            errors.append(f"{type(e).__name__}: {e}")
        return -1

    async def fresh() -> None:
        while (i := take()) < total:
            t0 = monotonic()
            writer: asyncio.StreamWriter | None = None
            try:
                reader, writer = await asyncio.open_connection(host, port, ssl=ctx)
                writer.write(spec.requests[i])
                status = (await _read_response(reader))[0]
            except (OSError, EOFError, ValueError, asyncio.IncompleteReadError) as e:
                status = failed(e)
            finally:
                if writer is not None:
                    writer.close()  # what a device does once it has its answer
                    writers.append(writer)
            records.append((t0, monotonic(), status))

    async def keepalive() -> None:
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while (i := take()) < total:
            t0 = monotonic()
            try:
                if conn is None:
                    conn = await asyncio.open_connection(host, port, ssl=ctx)
                    writers.append(conn[1])
                conn[1].write(spec.requests[i])
                status, close, _ = await _read_response(conn[0])
                if close:
                    conn[1].close()
                    conn = None
            except (OSError, EOFError, ValueError, asyncio.IncompleteReadError) as e:
                status = failed(e)
                if conn is not None:
                    conn[1].close()
                    conn = None
            records.append((t0, monotonic(), status))
        if conn is not None:
            conn[1].close()

    worker = fresh if spec.mode == "fresh" else keepalive
    await asyncio.gather(*(worker() for _ in range(spec.concurrency)))
    # Let TLS shutdowns finish outside the measured work, so no phase inherits another's.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(
            asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True), 10
        )
    return records, "; ".join(errors)


def _worker_main(conn: Connection, host: str, port: int, counter: Synchronized[int]) -> None:
    """A load process: receives a phase, says ready, waits for go, runs it, sends records."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    while True:
        msg = conn.recv()
        if msg is None:
            return
        spec: PhaseSpec = msg
        gc.collect()
        conn.send("ready")
        if conn.recv() != "go":
            return
        gc.disable()  # no collector pauses in the generator's latencies
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        records, errors = asyncio.run(_drive(spec, host, port, counter))
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        gc.enable()
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        conn.send((records, errors, cpu))


class LoadGenerator:
    """``processes`` load processes sharing one request counter, so exactly ``concurrency``
    requests are in flight across them until the phase's requests run out."""

    def __init__(self, host: str, port: int, processes: int) -> None:
        ctx = mp.get_context("spawn")
        self.counter: Synchronized[int] = ctx.Value("q", 0)
        self.pipes: list[Connection] = []
        self.procs: list[mp.process.BaseProcess] = []
        for n in range(processes):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_worker_main,
                args=(child, host, port, self.counter),
                name=f"loadgen-{n}",
                daemon=True,
            )
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(None)
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join()

    def run(self, spec: PhaseSpec, server_pid: int) -> PhaseResult:
        n = len(self.pipes)
        per = [spec.concurrency // n + (1 if i < spec.concurrency % n else 0) for i in range(n)]
        for pipe, conc in zip(self.pipes, per, strict=True):
            pipe.send(dataclasses.replace(spec, concurrency=conc))
        for pipe in self.pipes:
            if pipe.recv() != "ready":
                raise RuntimeError("load process failed to get ready")
        with self.counter.get_lock():
            self.counter.value = 0
        with CpuSampler(server_pid, [*self.pids, os.getpid()]) as sampler:
            for pipe in self.pipes:
                pipe.send("go")
            replies = [pipe.recv() for pipe in self.pipes]
        records = [r for reply in replies for r in reply[0]]
        error_sample = "; ".join(reply[1] for reply in replies if reply[1])
        return analyse(spec, records, sampler, error_sample)


def analyse(
    spec: PhaseSpec, records: list[Record], sampler: CpuSampler, error_sample: str
) -> PhaseResult:
    """Figures over the steady state: after ``warmup`` completions and before the last
    ``concurrency`` (the drain, when fewer than ``concurrency`` are in flight)."""
    ends = sorted(r[1] for r in records)
    lo = min(spec.warmup, len(ends) - 2)
    hi = max(lo + 1, len(ends) - spec.concurrency)
    t0, t1 = ends[lo], ends[hi - 1]
    window = [r for r in records if t0 < r[1] <= t1]
    timed = sorted(r[1] - r[0] for r in window if r[0] >= t0)
    errors = sum(1 for r in records if r[2] != spec.expect_status)
    a, b = sampler.at(t0), sampler.at(t1)
    seconds = t1 - t0
    total_ticks = max(1, b.total - a.total)
    server_cpu = (b.server - a.server) / seconds
    client_cpu = (b.clients - a.clients) / seconds
    busy_cores = (b.busy - a.busy) / CLK_TCK / seconds
    return PhaseResult(
        name=spec.name,
        mode=spec.mode,
        concurrency=spec.concurrency,
        requests=len(records),
        measured=len(window),
        errors=errors,
        error_sample=error_sample,
        seconds=seconds,
        rate=len(window) / seconds if seconds > 0 else float("nan"),
        p50_ms=percentile(timed, 50) * 1000,
        p99_ms=percentile(timed, 99) * 1000,
        max_ms=(timed[-1] if timed else float("nan")) * 1000,
        latencies=timed,
        server_cpu=server_cpu,
        client_cpu=client_cpu,
        other_cpu=max(0.0, busy_cores - server_cpu - client_cpu),
        machine_busy=(b.busy - a.busy) / total_ticks,
        steal=(b.steal - a.steal) / total_ticks,
    )


# --------------------------------------------------------------------------- profiling


@contextlib.contextmanager
def py_spy(pid: int, out: Path | None, native: bool = False) -> Iterator[None]:
    """With ``out``, record the server with py-spy while the block runs (format by suffix:
    ``.txt`` collapsed stacks, else a flame graph). Python frames only, sampled without
    pausing the server; ``native`` adds C/Rust frames (OpenSSL, SQLite, cryptography) but
    pauses the server at every sample and counts threads waiting in C (on the GIL, on a
    queue) as busy, so use it for where native time goes, not for shares of CPU."""
    if out is None:
        yield
        return
    exe = Path(sys.executable).parent / "py-spy"
    cmd = [str(exe), "record", "--pid", str(pid), "--rate", "100", "--output", str(out)]
    cmd += ["--format", "raw" if out.suffix == ".txt" else "flamegraph"]
    cmd += ["--native"] if native else ["--nonblocking"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)  # attach before the load starts
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- BENCHMARKS.md

BENCHMARKS_HEADER = """\
# Benchmarks

Measured figures of the real server, one row per full run, newest last. Each bench is a
script in `bench/` that starts `corral serve` (the code of the tree it lives in) in a
subprocess on 127.0.0.1, with a free port and a temporary data directory, and drives it from
separate load-generator processes on the same machine.

How to run (from the repository root, after `make` has set up `.venv`):

    make bench                                          # = .venv/bin/python bench/registration.py
    .venv/bin/python bench/registration.py --quick      # smoke run (~15 s), not recorded
    .venv/bin/python bench/registration.py --no-record  # full run (~1-2 min), not recorded
    .venv/bin/pip install py-spy                        # once, for --profile
    .venv/bin/python bench/registration.py --profile /tmp/prof   # + flame graphs of the server

A full run prints one result line on stdout (progress on stderr) and appends a row below.
Run benches on an otherwise idle machine: each phase waits for quiet and re-runs if other
work took CPU meanwhile, and a row whose figures were still disturbed says DISTURBED.
Figures drift by 10-30 % run to run on a shared VM; compare ratios (each against a baseline
measured in the same run) rather than absolute rates across machines. The load generator
shares the cores with the server, so notes also give the server's own CPU per request (ms of
CPU), which does not depend on how much CPU the generator took.

| date | benchmark | figure | baseline | ratio | target | notes |
| --- | --- | --- | --- | --- | --- | --- |
"""


def append_benchmark_row(cells: Sequence[str], path: Path = BENCHMARKS_MD) -> None:
    """Append one table row (the header first if the file is new). O_APPEND, never a
    rewrite: other benches may append at the same time."""
    row = "| " + " | ".join(c.replace("|", "/").replace("\n", " ") for c in cells) + " |\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if os.fstat(fd).st_size == 0:
            os.write(fd, BENCHMARKS_HEADER.encode())
        elif not path.read_bytes().endswith(b"\n"):
            os.write(fd, b"\n")
        os.write(fd, row.encode())
    finally:
        os.close(fd)


def today() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
