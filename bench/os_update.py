"""OS-image delivery: N simulated devices download one image from the mirror, each cut once
at half and resumed with Range.

One run, against ``corral serve`` in its own process (blocking guard off):

1. setup, not timed: N devices register (each its own key and certificate); an image of
   ``--size-mb`` random bytes is imported with ``POST /api/v1/artifacts`` (streamed);
2. the baseline: the same bytes (N × size) read with ``cat`` from the mirror's own file
   (``<data>/artifacts/<sha256>``) to ``/dev/null``, timed;
3. the delivery: ``--workers`` processes, each running its share of the devices with
   ``--concurrency`` downloads at a time, every device with its own mTLS certificate through
   the agent's :class:`node_image.agent.download.Downloader` (streamed to disk, sha256 while
   streaming, free-space check). Each device's link drops once at half the image (its
   progress callback raises the error a cut connection raises, so the connection closes
   under the server) and the Downloader resumes with ``Range``. Timed from the first request
   to the last verified file. Bytes served come from the server's own counters
   (``/api/v1/stats``: bytes actually written, cut downloads included); the server's RSS is
   sampled every 0.25 s (flat = no file held in memory).

Target (issue 7): within 2× of the raw rate, server RSS flat.

Run: ``.venv/bin/python bench/os_update.py`` (200 devices, 100 MB); ``--quick`` = 10 devices,
8 MB, not recorded.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import hashlib  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import ssl  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import aiohttp  # noqa: E402
import requests  # noqa: E402

from bench.procstat import cpu_seconds, rss_kib  # noqa: E402
from bench.report import append_row, git_describe, log, today  # noqa: E402
from node_image.agent.download import Downloader, DownloadOptions  # noqa: E402
from tests.server_process import Server  # noqa: E402
from tests.support import Machine  # noqa: E402


@dataclass(frozen=True)
class Job:
    """One worker's share: the devices' certificate directories."""

    url: str
    ca: str
    sha256: str
    size: int
    devices: tuple[str, ...]
    scratch: str
    concurrency: int


@dataclass(frozen=True)
class WorkerResult:
    done: int
    requests: int
    resumed: int
    errors: tuple[str, ...]


class Cut(aiohttp.ClientPayloadError):
    """The link drops: what a cut connection raises inside the Downloader."""


async def _device(job: Job, directory: str, limit: asyncio.Semaphore) -> tuple[int, bool]:
    context = ssl.create_default_context(cafile=job.ca)
    context.load_cert_chain(f"{directory}/cert.pem", f"{directory}/key.pem")
    cut = {"done": False}

    async def progress(done: int, total: int | None) -> None:
        if not cut["done"] and done >= job.size // 2:
            cut["done"] = True
            raise Cut("link cut at half")

    dest = Path(job.scratch) / (Path(directory).name + ".img")
    options = DownloadOptions(retry_delay=0.05, reserve=0, chunk_size=1 << 20)
    async with limit:
        async with Downloader.open(context, options) as downloader:
            got = await downloader.fetch(job.url, dest, job.sha256, job.size, progress)
        await asyncio.to_thread(dest.unlink)
    return got.requests, cut["done"]


async def _worker(job: Job) -> WorkerResult:
    limit = asyncio.Semaphore(job.concurrency)
    results = await asyncio.gather(
        *(_device(job, d, limit) for d in job.devices), return_exceptions=True
    )
    errors = tuple(repr(r) for r in results if isinstance(r, BaseException))
    ok = [r for r in results if not isinstance(r, BaseException)]
    return WorkerResult(len(ok), sum(r[0] for r in ok), sum(1 for r in ok if r[1]), errors)


def run_worker(job: Job) -> WorkerResult:
    return asyncio.run(_worker(job))


class RssSampler:
    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(rss_kib(self.pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def register(server: Server, count: int, root: Path) -> list[str]:
    token = server.create_token(max_uses=count)["token"]
    dirs = []
    for i in range(count):
        machine = Machine()
        answer = server.request("POST", "/api/v1/register", json=machine.request(token))
        answer.raise_for_status()
        directory = root / f"dev{i:04d}"
        machine.write_identity(directory, answer.json())
        dirs.append(str(directory))
    return dirs


def make_image(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, 1 << 20))
            f.write(block)
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8, help="downloads per worker")
    parser.add_argument("--quick", action="store_true", help="10 devices, 8 MB, not recorded")
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--note", default="", help="appended to the row's notes")
    args = parser.parse_args()
    if args.quick:
        args.devices, args.size_mb, args.no_record = 10, 8, True
    size = args.size_mb * 1024 * 1024
    root = Path(tempfile.mkdtemp(prefix="corral-os-update-"))
    server = Server(data_dir=root / "data", guard_blocking=False)
    try:
        log("starting the server")
        server.start()
        log(f"registering {args.devices} devices")
        devices = register(server, args.devices, root / "devices")
        image = root / "image.squashfs"
        sha256 = make_image(image, size)
        log(f"importing a {args.size_mb} MB image")
        with image.open("rb") as f:
            answer = server.request(
                "POST",
                "/api/v1/artifacts",
                params={"kind": "os-image", "name": "os", "version": "2.0", "sha256": sha256},
                data=f,
                headers={"Authorization": f"Bearer {server.admin_token}"},
                timeout=600,
            )
        answer.raise_for_status()
        artifact = answer.json()
        image.unlink()
        mirror_file = server.data_dir / "artifacts" / sha256

        # Baseline: the same bytes with cat from the mirror's own file.
        log("baseline: cat")
        started = time.perf_counter()
        with open(os.devnull, "wb") as sink:
            subprocess.run(["cat", *[str(mirror_file)] * args.devices], stdout=sink, check=True)
        cat_seconds = time.perf_counter() - started

        scratch = root / "scratch"
        scratch.mkdir()
        shares = [tuple(devices[i :: args.workers]) for i in range(args.workers)]
        url = f"{server.url}/api/v1/artifacts/{artifact['id']}/content"
        jobs = [
            Job(url, str(server.ca), sha256, size, share, str(scratch), args.concurrency)
            for share in shares
            if share
        ]
        rss_before = rss_kib(server.pid)
        cpu_before = cpu_seconds(server.pid)
        log(f"delivery: {args.devices} devices, {len(jobs)} workers x {args.concurrency}")
        with ProcessPoolExecutor(len(jobs)) as pool, RssSampler(server.pid) as rss:
            started = time.perf_counter()
            results = list(pool.map(run_worker, jobs))
            seconds = time.perf_counter() - started
        server_cpu = cpu_seconds(server.pid) - cpu_before
        stats = requests.get(
            f"{server.url}/api/v1/stats",
            headers={"Authorization": f"Bearer {server.admin_token}"},
            verify=str(server.ca),
            timeout=30,
        ).json()["artifacts"]
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)

    done = sum(r.done for r in results)
    resumed = sum(r.resumed for r in results)
    errors = [e for r in results for e in r.errors]
    needed = args.devices * size
    served = stats["bytes_served"]
    rate = needed / seconds / 1e6
    cat_rate = needed / cat_seconds / 1e6
    ratio = seconds / cat_seconds
    peak = max(rss.samples) if rss.samples else rss_before
    growth = (peak - rss_before) / 1024
    # "Flat": what the server holds grows with the downloads in flight (a 256 KiB chunk, TLS
    # and transport buffers, the reading threads' arenas each), never with the image: below
    # 4 MB per concurrent download, and below one image.
    in_flight = min(args.devices, len(jobs) * args.concurrency)
    flat = growth < min(4 * in_flight, args.size_mb)
    line = (
        f"os-update {args.devices} devices x {args.size_mb} MB: {seconds:.1f} s "
        f"({rate:.0f} MB/s), served {served / needed:.3f}x the image bytes; "
        f"cat {cat_seconds:.1f} s ({cat_rate:.0f} MB/s); ratio {ratio:.1f}x; "
        f"server RSS {rss_before / 1024:.0f} -> peak {peak / 1024:.0f} MB"
    )
    print(line)
    if errors:
        log(f"{len(errors)} devices failed: {errors[:3]}")
    if args.no_record:
        return
    notes = (
        f"{done}/{args.devices} verified, {resumed} cut at half and resumed with Range, "
        f"{stats['requests']} requests ({stats['range_requests']} ranged); served "
        f"{served / 1e6:.0f} MB for {needed / 1e6:.0f} MB needed ({served / needed:.3f}x); "
        f"server RSS {rss_before / 1024:.0f} MB before, peak {peak / 1024:.0f} MB "
        f"({len(rss.samples)} samples; +{growth:.0f} MB for {in_flight} downloads in flight): "
        f"{'flat' if flat else 'GROWS'}; server CPU {server_cpu:.0f} s "
        f"({server_cpu / (served / 1e9):.1f} s per GB served); {len(jobs)} worker "
        f"processes x {args.concurrency} concurrent, Downloader over mTLS, each file sha256 "
        f"verified and deleted; 2 shared cores, load average {os.getloadavg()[0]:.1f} at the "
        f"end (other engineers' work); errors {len(errors)}; {git_describe()}"
    )
    if args.note:
        notes += f"; {args.note}"
    append_row(
        [
            today(),
            f"OS-image delivery, {args.devices} devices x {args.size_mb} MB, one cut at 50 % "
            "each (bench/os_update.py)",
            f"{seconds:.1f} s, {rate:.0f} MB/s of image delivered",
            f"cat of the mirror's file x {args.devices}: {cat_seconds:.1f} s ({cat_rate:.0f} MB/s)",
            f"{ratio:.1f}x",
            f"<= 2x raw: {'ok' if ratio <= 2 else 'MISS'}; RSS flat: {'ok' if flat else 'MISS'}",
            notes,
        ]
    )


if __name__ == "__main__":
    main()
