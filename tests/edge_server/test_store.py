"""The single writer: group commit, per-job rollback, and reads that never block the loop."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlite_utils import Database

from edge_server.store import Store


class Boom(Exception):
    pass


async def test_a_failing_job_rolls_back_alone_while_its_batch_commits(tmp_path: Path) -> None:
    store = Store(tmp_path / "t.db")
    await store.start()
    try:
        await store.write(lambda db: db.execute("CREATE TABLE t (v INTEGER UNIQUE)"))

        def insert(v: int) -> int:
            def job(db: Database) -> int:
                db.execute("INSERT INTO t (v) VALUES (?)", (v,))
                if v % 3 == 0:
                    raise Boom(v)
                return v

            return job  # type: ignore[return-value]

        results = await asyncio.gather(
            *(store.write(insert(v)) for v in range(300)),
            return_exceptions=True,  # type: ignore[arg-type]
        )
        failed = [r for r in results if isinstance(r, Boom)]
        assert len(failed) == 100
        rows = await store.read(lambda db: [r["v"] for r in db.query("SELECT v FROM t ORDER BY v")])
        assert rows == [v for v in range(300) if v % 3]
        # A constraint error is the caller's, and later writes still work.
        with pytest.raises(Exception, match="UNIQUE"):
            await store.write(lambda db: db.execute("INSERT INTO t (v) VALUES (1)"))
        await store.write(lambda db: db.execute("INSERT INTO t (v) VALUES (1000)"))
        assert await store.read(lambda db: db.execute("SELECT max(v) FROM t").fetchone()[0]) == 1000
    finally:
        await store.close()


async def test_writes_survive_a_reopen(tmp_path: Path) -> None:
    store = Store(tmp_path / "t.db")
    await store.start()
    await store.write(lambda db: db.execute("CREATE TABLE t (v INTEGER)"))
    await asyncio.gather(
        *(store.write(lambda db: db.execute("INSERT INTO t VALUES (1)")) for _ in range(50))
    )
    await store.close()
    again = Store(tmp_path / "t.db")
    await again.start()
    try:
        assert await again.read(lambda db: db.execute("SELECT count(*) FROM t").fetchone()[0]) == 50
        applied = await again.read(
            lambda db: db.execute("SELECT count(*) FROM _sqlite_migrations").fetchone()[0]
        )
        assert applied >= 1
    finally:
        await again.close()
