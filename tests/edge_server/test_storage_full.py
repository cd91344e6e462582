"""A full disk under the data dir: 507 ``storage_full``, one log line, healthz degraded, and
recovery on its own once space comes back. A real server process on a real 3 MB tmpfs."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from sqlite_utils import Database

from edge_server.errors import Conflict, StorageFull
from edge_server.store import Store
from tests.edge_server.test_openapi import Contract
from tests.support import Machine, Server, free_port

pytestmark = pytest.mark.slow  # mounts a tmpfs: runs as root, like CI


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "3m") -> Iterator[Path]:
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def fill(path: Path) -> None:
    """Write zeros until the filesystem refuses another byte."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    with pytest.raises(OSError) as refused:
        path.with_suffix(".more").write_bytes(b"\0" * 4096)
    assert refused.value.errno == errno.ENOSPC


def register(server: Server, token: str) -> requests.Response:
    return requests.post(
        f"{server.url}/api/v1/register",
        json=Machine().request(token),
        verify=str(server.ca),
        timeout=30,
    )


def healthz(server: Server) -> requests.Response:
    return requests.get(f"{server.url}/healthz", verify=str(server.ca), timeout=10)


def assert_storage_full(response: requests.Response) -> None:
    assert response.status_code == 507, (response.status_code, response.text)
    body = response.json()
    assert body["error"] == "storage_full"
    assert "disk" in body["detail"] or "space" in body["detail"]


def test_full_disk_answers_507_logs_once_degrades_healthz_and_recovers(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "data") as data:
        server = Server(
            data_dir=data,
            port=free_port(),
            env={"CORRAL_REGISTER_FAILURES_PER_MINUTE": "100000"},
        )
        try:
            server.start()
            token = server.create_token(max_uses=10_000)["token"]
            assert register(server, token).status_code == 201
            assert healthz(server).json()["status"] == "ok"

            filler = data / "filler"
            fill(filler)
            registered = 1
            refused: list[requests.Response] = []
            for _ in range(400):
                response = register(server, token)
                if response.status_code == 201:
                    registered += 1
                    assert not refused, "a registration succeeded after the disk filled up"
                else:
                    refused.append(response)
                if len(refused) >= 40:
                    break
            assert len(refused) >= 40, f"the disk never filled up ({registered} registered)"
            for response in refused:
                assert_storage_full(response)

            # Operator writes are refused the same way; reads still answer.
            group = {"name": "full", "selector": "", "spec": {"os": {"version": "1.0"}}}
            assert_storage_full(server.api("POST", "/api/v1/groups", group))
            assert_storage_full(server.api("POST", "/api/v1/tokens", {"ttl_seconds": 60}))
            assert server.api("GET", "/api/v1/devices").status_code == 200

            health = healthz(server)
            assert health.status_code == 503, health.text
            contract = Contract(server)  # the degraded answers are the documented ones
            contract.check("GET", "/healthz", health, {}, {})
            contract.check(
                "POST", "/api/v1/groups", server.api("POST", "/api/v1/groups", group), {}, {}
            )
            assert health.json()["status"] == "degraded"
            assert health.json()["storage"] == "full"

            log = server.log()
            assert "Traceback" not in log, log[-4000:]
            assert "unhandled error" not in log, log[-4000:]
            full_lines = [line for line in log.splitlines() if "storage full" in line]
            assert len(full_lines) == 1, full_lines

            filler.unlink()
            # Recovery on its own: healthz first (it probes the disk), then writes.
            health = healthz(server)
            assert health.status_code == 200, health.text
            assert health.json()["status"] == "ok"
            for _ in range(5):
                assert register(server, token).status_code == 201
                registered += 1
            assert server.api("POST", "/api/v1/groups", group).status_code == 201
            assert "storage writable again" in server.log()
        finally:
            server.stop_all()
        log = server.log()
        assert "Traceback" not in log, log[-4000:]

        # Nothing half-written: every answered registration is whole, no refused one left a row.
        db = sqlite3.connect(f"file:{data / 'corral.db'}?mode=ro", uri=True)
        try:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            devices = db.execute("SELECT count(*) FROM devices").fetchone()[0]
            assert devices == registered
            uses = db.execute("SELECT max(uses) FROM reg_tokens").fetchone()[0]
            assert uses == registered
            assert db.execute("SELECT count(*) FROM certificates").fetchone()[0] == registered
            assert db.execute("SELECT count(*) FROM device_state").fetchone()[0] == registered
            assert db.execute("SELECT count(*) FROM groups").fetchone()[0] == 1
        finally:
            db.close()


async def test_the_writer_warns_once_per_interval_keeps_jobs_own_errors_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge_server.store.db")
    with small_tmpfs(tmp_path / "data") as data:
        store = Store(data / "s.db", full_log_interval=0.5)
        await store.start()
        try:
            await store.write(lambda db: db.execute("CREATE TABLE t (v TEXT NOT NULL)"))

            def insert(db: Database) -> None:
                db.execute("INSERT INTO t (v) VALUES (?)", ("x" * 3000,))

            def refuse(db: Database) -> None:
                insert(db)
                raise Conflict("this job's own verdict")

            await asyncio.to_thread(fill, data / "filler")
            stored = 0
            with pytest.raises(StorageFull):
                for _ in range(1000):
                    await store.write(insert)
                    stored += 1
            assert store.storage_full

            outcomes = await asyncio.gather(
                *(store.write(insert) for _ in range(30)),
                store.write(refuse),
                return_exceptions=True,
            )
            assert all(isinstance(o, StorageFull) for o in outcomes[:-1]), outcomes
            assert isinstance(outcomes[-1], Conflict)

            def warnings() -> list[str]:
                return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

            assert len(warnings()) == 1, warnings()
            await asyncio.sleep(0.6)
            with pytest.raises(StorageFull):
                await store.write(insert)
            assert len(warnings()) == 2, warnings()
            assert "31 write(s) refused" in warnings()[1]
            assert await store.probe() is False

            (data / "filler").unlink()
            assert await store.probe() is True
            assert not store.storage_full
            assert any("storage writable again" in r.getMessage() for r in caplog.records)
            await store.write(insert)
            stored += 1
            count = await store.read(lambda db: db.execute("SELECT count(*) FROM t").fetchone())
            assert count[0] == stored
            check = await store.read(lambda db: db.execute("PRAGMA integrity_check").fetchone())
            assert check[0] == "ok"
        finally:
            await store.close()
