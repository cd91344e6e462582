"""The database: one writer thread with group commit, and a small pool of readers.

Handlers never touch SQLite on the event loop. ``await store.write(fn)`` queues ``fn(db)``
for the writer thread, which runs queued jobs in one transaction, each inside its own
savepoint: a job that raises is rolled back alone and its caller gets the exception; the
others commit together. A caller's future resolves only after COMMIT, so a reply sent after
``write`` returns describes durable state.

A full disk refuses whole transactions: SQLite rolls the batch back, each caller gets
:class:`StorageFull` (507), one warning is logged per interval however many writes fail, and
:attr:`Store.storage_full` stays set until a write commits again (:meth:`Store.probe` tries one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard, TypeVar

from sqlite_utils import Database

from edge_server.errors import StorageFull
from edge_server.store.migrations import migrate

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_BATCH = 128
FULL_LOG_INTERVAL = 60.0


def is_storage_full(error: BaseException) -> TypeGuard[sqlite3.Error]:
    """SQLite's own verdict: SQLITE_FULL, or the WAL index (-shm) could not grow."""
    if not isinstance(error, sqlite3.Error):
        return False
    code = error.sqlite_errorcode
    return code & 0xFF == sqlite3.SQLITE_FULL or code == sqlite3.SQLITE_IOERR_SHMSIZE


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


class _TransactionLost(Exception):
    """SQLite rolled the whole transaction back under a job (a full disk, an I/O error)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class DiskFull:
    """The full-disk state the writer keeps: since when, and how many writes were refused.

    At most one warning per ``interval`` however many writes fail, and one info line when a
    write commits again after a warning, so a disk hovering at the brim cannot flood the log.
    """

    def __init__(self, path: Path, interval: float) -> None:
        self.path = path
        self.interval = interval
        self.since: float | None = None
        self._warned_at: float | None = None
        self._warned = False
        self._refused = 0

    def refuse(self, cause: sqlite3.Error) -> StorageFull:
        now = time.monotonic()
        if self.since is None:
            self.since = now
        self._refused += 1
        if self._warned_at is None or now - self._warned_at >= self.interval:
            log.warning(
                "storage full: %d write(s) refused since the last report (%s: %s); free "
                "space there and writes resume by themselves; next report in %ds at most",
                self._refused,
                self.path,
                cause,
                int(self.interval),
            )
            self._warned_at = now
            self._warned = True
            self._refused = 0
        error = StorageFull(
            "the server's disk is full: nothing of this request was saved; retry after the "
            "operator frees space"
        )
        error.__cause__ = cause
        return error

    def committed(self) -> None:
        """A transaction that changed rows reached the disk."""
        if self.since is not None and self._warned:
            log.info(
                "storage writable again after %.0fs (%d more write(s) refused since the "
                "last report)",
                time.monotonic() - self.since,
                self._refused,
            )
            self._warned = False
            self._refused = 0
        self.since = None


class Store:
    def __init__(
        self, path: Path, readers: int = 2, full_log_interval: float = FULL_LOG_INTERVAL
    ) -> None:
        self.path = path
        self.disk_full = DiskFull(path, full_log_interval)
        self._probing: asyncio.Future[None] | None = None
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

    @property
    def storage_full(self) -> bool:
        """True from a write refused for lack of space until a write commits again."""
        return self.disk_full.since is not None

    async def probe(self) -> bool:
        """While storage is known full, try one small durable write (concurrent callers share
        it); True when storage is writable."""
        if not self.storage_full:
            return True
        if self._probing is None:
            self._probing = asyncio.ensure_future(self.write(_probe))
            self._probing.add_done_callback(self._probed)
        with contextlib.suppress(StorageFull):
            await asyncio.shield(self._probing)
        return not self.storage_full

    def _probed(self, future: asyncio.Future[None]) -> None:
        self._probing = None
        if not future.cancelled():
            future.exception()  # retrieved: a failed probe is the answer, not an error

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
            wrote = False
            for job in batch:
                conn.execute("SAVEPOINT job")
                changes = conn.total_changes
                try:
                    value = job.fn(db)
                except Exception as e:  # noqa: BLE001 - handed to the caller, not swallowed
                    if not conn.in_transaction:
                        raise _TransactionLost(e) from e
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    results.append((job, False, self._refusal(e)))
                else:
                    conn.execute("RELEASE job")
                    results.append((job, True, value))
                    wrote = wrote or conn.total_changes != changes
            conn.execute("COMMIT")
        except (sqlite3.Error, _TransactionLost) as e:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            error = e.error if isinstance(e, _TransactionLost) else e
            results = self._batch_failed(error, batch, results)
        else:
            if wrote:
                self.disk_full.committed()
        for job, ok, value in results:
            job.loop.call_soon_threadsafe(_settle, job.future, ok, value)

    def _refusal(self, error: Exception) -> Exception:
        """A job's own error, or :class:`StorageFull` when SQLite ran out of space under it."""
        if is_storage_full(error):
            return self.disk_full.refuse(error)
        return error

    def _batch_failed(
        self, error: Exception, batch: list[_Job], done: list[tuple[_Job, bool, Any]]
    ) -> list[tuple[_Job, bool, Any]]:
        """Nothing of the batch committed. Jobs that failed on their own keep their error; the
        others get the transaction's (:class:`StorageFull` for a full disk, one each)."""
        own = {id(job): value for job, ok, value in done if not ok}
        if not is_storage_full(error):
            log.error("write transaction failed; %d jobs fail with it", len(batch), exc_info=error)
        results: list[tuple[_Job, bool, Any]] = []
        for job in batch:
            if id(job) in own:
                results.append((job, False, own[id(job)]))
            elif is_storage_full(error):
                results.append((job, False, self.disk_full.refuse(error)))
            else:
                results.append((job, False, error))
        return results


def _probe(db: Database) -> None:
    """A one-row write that must reach the disk at COMMIT."""
    db.execute("INSERT OR REPLACE INTO storage_probe (id, at) VALUES (1, ?)", (time.time(),))


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.cancelled():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)
