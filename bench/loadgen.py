"""The HTTPS load generator of the registration bench: ``processes`` load processes, each an
``asyncio`` loop speaking HTTP/1.1 over TLS streams itself, sharing one request counter.

It does not use an HTTP client library: every bench runs the generator on the same cores as
the server, so each microsecond the generator spends is a microsecond the server does not
get. Requests are built as bytes before timing starts and responses are parsed only as far as
status, length and ``Connection``. Figures come from the steady state (after a warm-up,
before the drain), with the CPU of server, generator and machine over exactly that window.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import multiprocessing as mp
import os
import resource
import signal
import ssl
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from typing import Literal

from bench.procstat import CLK_TCK, CpuSampler
from bench.report import percentile

Mode = Literal["fresh", "keepalive"]


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
