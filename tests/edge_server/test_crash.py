"""kill -9 the server in the middle of 500 concurrent registrations, then restart it."""

from __future__ import annotations

import asyncio
import sqlite3
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.connector import NEEDS_CLEANUP_CLOSED

from tests.support import Machine, Server, tls_connector

N = 500


async def register(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any]] | None:
    try:
        async with session.post(f"{url}/api/v1/register", json=body) as r:
            return r.status, await r.json()
    except (TimeoutError, aiohttp.ClientError):
        return None  # the server died under us


async def whoami_status(server: Server, device_id: str, cert: tuple[str, str]) -> int:
    ctx = ssl.create_default_context(cafile=str(server.ca))
    ctx.load_cert_chain(*cert)
    async with (
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ctx, enable_cleanup_closed=NEEDS_CLEANUP_CLOSED)
        ) as session,
        session.get(f"{server.url}/api/v1/devices/{device_id}/whoami") as r,
    ):
        return r.status


@pytest.mark.slow
async def test_kill9_during_500_registrations_loses_nothing(
    lenient_server: Server, tmp_path: Path
) -> None:
    server = lenient_server
    token = server.create_token(max_uses=None)
    machines = [Machine() for _ in range(N)]
    bodies = [m.request(token["token"]) for m in machines]
    connector = tls_connector(server, limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = [asyncio.create_task(register(session, server.url, b)) for b in bodies]
        # Kill once a good share has been answered, with many still in flight.
        enough = asyncio.Event()
        answered_so_far = 0

        def count(_: object) -> None:
            nonlocal answered_so_far
            answered_so_far += 1
            if answered_so_far >= N // 5:
                enough.set()

        for task in tasks:
            task.add_done_callback(count)
        await enough.wait()
        await asyncio.to_thread(server.kill9)
        results = await asyncio.gather(*tasks)

    answered = {i: r[1] for i, r in enumerate(results) if r is not None and r[0] == 201}
    lost = sum(1 for r in results if r is None)
    summary = f"{len(answered)} answered 201, {lost} lost to the kill, of {N}"
    assert answered, summary
    assert lost, summary

    await asyncio.to_thread(server.start)
    # Every registration that got 201 is there and its certificate works.
    for i, answer in answered.items():
        cert = await asyncio.to_thread(machines[i].write_identity, tmp_path / str(i), answer)
        assert await whoami_status(server, answer["device_id"], cert) == 200

    # Every machine retries, as agents do: no duplicates, and the answered keep their ids.
    connector = tls_connector(server, limit=64)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        retried = await asyncio.gather(*(register(session, server.url, b) for b in bodies))
    assert all(r is not None and r[0] in (200, 201) for r in retried), summary
    for i, answer in answered.items():
        again = retried[i]
        assert again is not None and again[0] == 200
        assert again[1]["device_id"] == answer["device_id"]
    ids = [r[1]["device_id"] for r in retried if r is not None]
    assert len(set(ids)) == N

    await asyncio.to_thread(server.stop)

    def check_db() -> tuple[str, int, int]:
        conn = sqlite3.connect(server.data_dir / "corral.db")
        try:
            integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
            devices = conn.execute("SELECT count(*) FROM devices").fetchone()[0]
            distinct = conn.execute("SELECT count(DISTINCT machine_id) FROM devices").fetchone()[0]
        finally:
            conn.close()
        return integrity, devices, distinct

    integrity, devices, distinct = await asyncio.to_thread(check_db)
    assert integrity == "ok"
    assert devices == distinct == N
