"""The database: one writer thread with group commit, and a small pool of readers.

Handlers never touch SQLite on the event loop. ``await store.write(fn)`` queues ``fn(db)``
for the writer thread, which runs queued jobs in one transaction, each inside its own
savepoint: a job that raises is rolled back alone and its caller gets the exception; the
others commit together. A caller's future resolves only after COMMIT, so a reply sent after
``write`` returns describes durable state.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlite_utils import Database

from edge_server.store.migrations import migrate

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_BATCH = 128


def connect(path: Path) -> Database:
    """A connection in autocommit mode (we issue BEGIN ourselves), WAL, sane pragmas."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    db = Database(conn)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    return db


@dataclass
class _Job:
    fn: Callable[[Database], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


_STOP = object()


class Store:
    def __init__(self, path: Path, readers: int = 2) -> None:
        self.path = path
        self._queue: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="db-read")
        self._local = threading.local()
        self._reader_dbs: list[Database] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        self._writer = threading.Thread(
            target=self._write_loop, args=(loop, ready), name="db-writer", daemon=True
        )
        self._writer.start()
        await ready

    async def close(self) -> None:
        self._queue.put(_STOP)
        if self._writer is not None:
            await asyncio.to_thread(self._writer.join)
        await asyncio.to_thread(self._readers.shutdown, True)
        for db in self._reader_dbs:
            db.conn.close()

    async def write(self, fn: Callable[[Database], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Job(fn, future, loop))
        return await future

    async def read(self, fn: Callable[[Database], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._run_read, fn)

    def _run_read(self, fn: Callable[[Database], T]) -> T:
        db: Database | None = getattr(self._local, "db", None)
        if db is None:
            db = connect(self.path)
            self._local.db = db
            self._reader_dbs.append(db)
        return fn(db)

    def _write_loop(self, loop: asyncio.AbstractEventLoop, ready: asyncio.Future[None]) -> None:
        try:
            db = connect(self.path)
            migrate(db)
        except (sqlite3.Error, OSError) as e:
            loop.call_soon_threadsafe(ready.set_exception, e)
            return
        loop.call_soon_threadsafe(ready.set_result, None)
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            batch: list[_Job] = [first]  # type: ignore[list-item]
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)  # type: ignore[arg-type]
            self._run_batch(db, batch)
        db.conn.close()

    def _run_batch(self, db: Database, batch: list[_Job]) -> None:
        conn = db.conn
        results: list[tuple[_Job, bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in batch:
                conn.execute("SAVEPOINT job")
                try:
                    value = job.fn(db)
                except Exception as e:  # noqa: BLE001 - handed to the caller, not swallowed
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    results.append((job, False, e))
                else:
                    conn.execute("RELEASE job")
                    results.append((job, True, value))
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            log.exception("write transaction failed; %d jobs fail with it", len(batch))
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            results = [(job, False, e) for job in batch]
        for job, ok, value in results:
            job.loop.call_soon_threadsafe(_settle, job.future, ok, value)


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.cancelled():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)
