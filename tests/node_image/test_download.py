"""The reconciler context's downloader against a real HTTPS mirror on 127.0.0.1 (mTLS with
the agent's own identity files): cuts resumed with Range, sha256 checked while streaming,
free space checked first, and long work that leaves the loop free."""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from node_image.agent.context import ReconcileContext, run_reconcile
from node_image.agent.download import DownloadError, DownloadOptions
from node_image.agent.outbox import Outbox
from node_image.agent.state import StateDir
from node_image.boot import RebootRequested
from node_image.host import SimulatedHost
from registration import identity
from registration.desired import Condition, Spec

SIZE = 3 * 1024 * 1024 + 1234
FAST = DownloadOptions(chunk_size=64 * 1024, retry_delay=0.01, reserve=0)


@dataclass
class Mirror:
    """What the test server serves, and what it saw."""

    data: bytes
    url: str = ""
    #: The next response stops (connection closed) once this absolute offset is sent.
    cut_at: int | None = None
    ignore_range: bool = False
    delay: float = 0.0
    served: int = 0
    ranges: list[str | None] = field(default_factory=list)
    client_cns: list[str] = field(default_factory=list)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


MIRROR = web.AppKey("mirror", Mirror)


async def serve(request: web.Request) -> web.StreamResponse:
    mirror = request.app[MIRROR]
    peer = request.transport.get_extra_info("peercert") if request.transport else None
    if peer:
        mirror.client_cns.append(dict(x[0] for x in peer["subject"])["commonName"])
    header = request.headers.get("Range")
    mirror.ranges.append(header)
    total = len(mirror.data)
    start = 0
    if header and not mirror.ignore_range:
        start = int(header.removeprefix("bytes=").rstrip("-"))
    if start >= total:
        return web.Response(status=416, headers={"Content-Range": f"bytes */{total}"})
    resp = web.StreamResponse(status=206 if start else 200)
    resp.content_length = total - start
    if start:
        resp.headers["Content-Range"] = f"bytes {start}-{total - 1}/{total}"
    await resp.prepare(request)
    end, cut = total, False
    if mirror.cut_at is not None and start < mirror.cut_at:
        end, cut, mirror.cut_at = mirror.cut_at, True, None
    for i in range(start, end, 65536):
        chunk = mirror.data[i : min(i + 65536, end)]
        await resp.write(chunk)
        mirror.served += len(chunk)
        if mirror.delay:
            await asyncio.sleep(mirror.delay)
    if cut and request.transport is not None:
        request.transport.close()  # the link drops mid-stream
        raise asyncio.CancelledError
    await resp.write_eof()
    return resp


@dataclass
class Pki:
    state: StateDir
    server_tls: ssl.SSLContext


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """A CA, a server certificate for 127.0.0.1 and a device identity in a state directory."""
    ca = identity.CertificateAuthority.create()
    state = StateDir(tmp_path / "state", fsync=False)
    state.ensure()
    device_key = identity.generate_key()
    device = ca.issue_device("dev-7", device_key.public_key(), identity.new_serial())
    state.key.write_bytes(identity.key_to_pem(device_key))
    state.cert.write_bytes(identity.cert_to_pem(device))
    state.ca.write_text(ca.pem)
    server_key = identity.generate_key()
    server_cert = ca.issue_server(server_key, ["127.0.0.1"])
    (tmp_path / "server.pem").write_bytes(identity.cert_to_pem(server_cert))
    (tmp_path / "server.key").write_bytes(identity.key_to_pem(server_key))
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cadata=ca.pem)
    tls.verify_mode = ssl.CERT_REQUIRED
    tls.load_cert_chain(tmp_path / "server.pem", tmp_path / "server.key")
    return Pki(state, tls)


@pytest.fixture
async def mirror(pki: Pki) -> AsyncIterator[Mirror]:
    found = Mirror(os.urandom(SIZE))
    app = web.Application()
    app[MIRROR] = found
    app.router.add_get("/artifacts/os.img", serve)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=pki.server_tls)
    await site.start()
    port = runner.addresses[0][1]
    found.url = f"https://127.0.0.1:{port}/artifacts/os.img"
    try:
        yield found
    finally:
        await runner.cleanup()


def context(pki: Pki, tmp_path: Path, **kw: object) -> tuple[ReconcileContext, list[Condition]]:
    reports: list[Condition] = []

    async def report(condition: Condition) -> None:
        reports.append(condition)

    ctx = ReconcileContext(
        "os",
        SimulatedHost(tmp_path / "dev"),
        pki.state,
        report=report,
        download_options=FAST,
        **kw,  # type: ignore[arg-type]
    )
    return ctx, reports


async def test_a_download_cut_at_half_resumes_from_there_with_range(
    pki: Pki, mirror: Mirror, tmp_path: Path
) -> None:
    mirror.cut_at = SIZE // 2
    ctx, reports = context(pki, tmp_path)
    dest = ctx.downloads / "os.img"
    got = await ctx.download(mirror.url, dest, mirror.sha256, SIZE, what="os 2.0")
    assert got.sha256 == mirror.sha256 and got.size == SIZE and got.requests == 2
    assert dest.read_bytes() == mirror.data
    assert not dest.with_name("os.img.part").exists()
    # The second request asked only for what was not on disk. (Bytes the server sent that
    # were still in flight when the link dropped are asked for again: at most a little.)
    assert mirror.ranges[0] is None and len(mirror.ranges) == 2
    resumed = int(str(mirror.ranges[1]).removeprefix("bytes=").rstrip("-"))
    assert SIZE // 2 - 1024 * 1024 <= resumed <= SIZE // 2
    assert mirror.served == SIZE // 2 + (SIZE - resumed)
    # Over mTLS with the agent's own identity files.
    assert mirror.client_cns == ["dev-7", "dev-7"]
    # Progressing with a percentage, in steps, ending at 100.
    assert all(c.type == "os" and c.status == "Progressing" for c in reports)
    percents = [int(c.message.split("%")[0]) for c in reports]
    assert percents == sorted(percents) and percents[-1] == 100 and len(percents) >= 5
    assert "os 2.0" in reports[-1].message
    # Asked again: the verified file is there, nothing is fetched.
    again = await ctx.download(mirror.url, dest, mirror.sha256, SIZE)
    assert again.requests == 0 and len(mirror.ranges) == 2


async def test_a_part_left_by_a_killed_agent_is_resumed_after_restart(
    pki: Pki, mirror: Mirror, tmp_path: Path
) -> None:
    ctx, _ = context(pki, tmp_path)
    dest = ctx.downloads / "os.img"
    dest.parent.mkdir(parents=True)
    have = 1_000_000
    dest.with_name("os.img.part").write_bytes(mirror.data[:have])
    got = await ctx.download(mirror.url, dest, mirror.sha256, SIZE)
    assert got.resumed_from == have and got.requests == 1
    assert mirror.ranges == [f"bytes={have}-"] and mirror.served == SIZE - have
    assert dest.read_bytes() == mirror.data


async def test_a_sha256_mismatch_is_refused_and_nothing_is_kept(
    pki: Pki, mirror: Mirror, tmp_path: Path
) -> None:
    ctx, _ = context(pki, tmp_path)
    dest = ctx.downloads / "os.img"
    wrong = hashlib.sha256(b"another image").hexdigest()
    with pytest.raises(DownloadError) as caught:
        await ctx.download(mirror.url, dest, wrong, SIZE)
    assert caught.value.reason == "Sha256Mismatch" and mirror.sha256 in str(caught.value)
    assert not dest.exists() and not dest.with_name("os.img.part").exists()
    # A mirror with a different size is refused on the headers, before streaming.
    with pytest.raises(DownloadError) as caught:
        await ctx.download(mirror.url, dest, mirror.sha256, SIZE + 1)
    assert caught.value.reason == "SizeMismatch"


async def test_a_server_that_ignores_range_is_read_again_from_the_start(
    pki: Pki, mirror: Mirror, tmp_path: Path
) -> None:
    mirror.cut_at, mirror.ignore_range = SIZE // 3, True
    ctx, _ = context(pki, tmp_path)
    got = await ctx.download(mirror.url, ctx.downloads / "os.img", mirror.sha256, SIZE)
    assert got.sha256 == mirror.sha256 and mirror.served == SIZE // 3 + SIZE


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB filesystem (tmpfs), mounted for the test."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


async def test_no_space_is_refused_before_a_byte_is_written(
    pki: Pki, mirror: Mirror, tmp_path: Path, small_fs: Path
) -> None:
    ctx, _ = context(pki, tmp_path)
    with pytest.raises(DownloadError) as caught:
        await ctx.download(mirror.url, small_fs / "os.img", mirror.sha256, SIZE)
    assert caught.value.reason == "NoSpace" and mirror.ranges == []  # not even asked
    # Size unknown: the server's Content-Length is checked before writing.
    with pytest.raises(DownloadError) as caught:
        await ctx.download(mirror.url, small_fs / "os.img", mirror.sha256)
    assert caught.value.reason == "NoSpace" and len(mirror.ranges) == 1
    written = await asyncio.to_thread(lambda: sum(p.stat().st_size for p in small_fs.iterdir()))
    assert written == 0


class Downloading:
    """A reconciler whose work is one long download."""

    name = "os"

    def __init__(self, mirror: Mirror) -> None:
        self.mirror = mirror

    async def reconcile(self, spec: Spec, ctx: ReconcileContext) -> Condition:
        mirror = self.mirror
        await ctx.download(mirror.url, ctx.downloads / "os.img", mirror.sha256, SIZE)
        return Condition(type="os", status="Ready", reason="Downloaded")


async def test_a_long_download_leaves_the_loop_free_and_times_out(
    pki: Pki, mirror: Mirror, tmp_path: Path
) -> None:
    mirror.delay = 0.02  # ~50 chunks of 64 KiB: about a second
    ctx, reports = context(pki, tmp_path)
    ticks = 0

    async def ticker() -> None:  # stands for nudges, pulls and the outbox flusher
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    tick = asyncio.create_task(ticker())
    try:
        condition = await run_reconcile(Downloading(mirror), Spec(), ctx, time_limit=0.4)
        assert (condition.status, condition.reason) == ("Error", "TimedOut")
        assert ticks >= 20, ticks
        # The pass had reported progress before it was cut short; the next one resumes.
        assert reports and 0 < mirror.served < SIZE
        served_before = mirror.served
        condition = await run_reconcile(Downloading(mirror), Spec(), ctx, time_limit=30)
        assert condition.status == "Ready"
        assert mirror.served - served_before <= SIZE - served_before + 65536 * 2
        assert mirror.ranges[-1] is not None
    finally:
        tick.cancel()


async def test_a_reboot_makes_the_outbox_durable_first(pki: Pki, tmp_path: Path) -> None:
    outbox = await asyncio.to_thread(Outbox.open, pki.state.outbox, fsync=False)
    ctx, _ = context(pki, tmp_path, outbox=outbox)

    async def report(condition: Condition) -> None:
        await asyncio.to_thread(outbox.append, 3, [condition])

    ctx.report = report
    await ctx.progress(None, "Rebooting", "into slot B")
    with pytest.raises(RebootRequested) as caught:
        await ctx.reboot()
    assert caught.value.slot == "A"  # nothing set to try: GRUB boots the good slot
    assert await asyncio.to_thread(outbox.flush_durable) == 1
    # The restarted agent finds the event still queued for sending.
    reopened = await asyncio.to_thread(Outbox.open, pki.state.outbox, fsync=False)
    [event] = reopened.pending()
    assert event.conditions[0].reason == "Rebooting" and event.observed_generation == 3
